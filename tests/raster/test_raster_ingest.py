"""pipeline.raster.ingest: tile-by-tile copy into zarr with georeferencing, and input errors."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from rasterio.enums import ColorInterp

from pipeline.errors import InputError
from pipeline.raster.ingest import RasterInfo, band_stats, every_pixel_valid, ingest_raster, probe_raster, read_info, scene_stem


def _open(store, **kw):
    return xr.open_zarr(store, decode_coords="all", **kw)


def test_landsat_round_trip_keeps_pixels_mask_crs_transform_nodata(landsat, tmp_path):
    store = tmp_path / "scene.zarr"
    info = ingest_raster(landsat, store, block=256)
    with rasterio.open(landsat) as src:
        expected = src.read()
        expected_mask = src.dataset_mask() > 0
        assert (info.width, info.height, info.count, info.dtype) == (src.width, src.height, 3, "uint8")
        assert info.crs == src.crs and info.transform == src.transform and info.nodata == 0.0
    ds = _open(store)
    assert ds.rio.crs == info.crs
    assert ds.rio.transform() == info.transform
    assert ds.image.rio.encoded_nodata == 0
    assert list(ds.band.values) == ["band_1", "band_2", "band_3"]
    raw = _open(store, mask_and_scale=False)
    assert raw.image.dtype == np.uint8
    np.testing.assert_array_equal(raw.image.values, expected)
    np.testing.assert_array_equal(raw.mask.values, expected_mask)
    assert 0 < expected_mask.sum() < expected_mask.size  # the nodata collar is really there
    assert not every_pixel_valid(store)
    group = zarr.open_group(store, mode="r")
    assert group["image"].chunks == (3, 256, 256) and group["mask"].chunks == (256, 256)
    assert group["mask"].dtype == np.bool_
    assert read_info(store) == info
    # pixel-centre coordinates in CRS units
    assert ds.x.values[0] == pytest.approx(info.transform.c + info.transform.a / 2)
    assert ds.y.values[-1] == pytest.approx(info.transform.f + info.transform.e * (info.height - 0.5))


def test_block_size_changes_nothing(landsat, tmp_path):
    a = ingest_raster(landsat, tmp_path / "a.zarr", block=100)
    b = ingest_raster(landsat, tmp_path / "b.zarr", block=512)
    assert a == b
    ga, gb = zarr.open_group(tmp_path / "a.zarr", mode="r"), zarr.open_group(tmp_path / "b.zarr", mode="r")
    np.testing.assert_array_equal(ga["image"][:], gb["image"][:])
    np.testing.assert_array_equal(ga["mask"][:], gb["mask"][:])


def test_reads_are_bounded_by_the_block(landsat, tmp_path, monkeypatch):
    seen = []
    original = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        window = kwargs.get("window")
        seen.append(None if window is None else (int(window.height), int(window.width)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    ingest_raster(landsat, tmp_path / "s.zarr", block=128)
    assert seen and None not in seen
    assert max(h for h, _ in seen) <= 128 and max(w for _, w in seen) <= 128
    assert len(seen) == 6 * 7  # ceil(718/128) x ceil(791/128) tiles


def test_band_selection_names_and_stats(naip, tmp_path):
    store = tmp_path / "n.zarr"
    info = ingest_raster(naip, store, block=300, bands=[4, 1], in_channels=2)
    assert info.bands == (4, 1) and info.band_names == ("band_4", "band_1") and info.count == 2
    with rasterio.open(naip) as src:
        expected = src.read([4, 1])
    np.testing.assert_array_equal(zarr.open_group(store, mode="r")["image"][:], expected)
    stats = band_stats(store)
    np.testing.assert_allclose(stats["mean"], expected.reshape(2, -1).mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], expected.reshape(2, -1).std(axis=1), rtol=1e-9)


def test_band_descriptions_and_float_nodata(tmp_path, make_geotiff):
    data = np.arange(2 * 30 * 40, dtype=np.float32).reshape(2, 30, 40)
    data[:, :5, :] = -9999.0
    tif = make_geotiff(tmp_path / "f.tif", data, crs="EPSG:4326", transform=Affine(0.01, 0, 10, 0, -0.01, 50), nodata=-9999.0, descriptions=["red", "nir"])
    info = ingest_raster(tif, tmp_path / "f.zarr", block=16)
    assert info.band_names == ("red", "nir") and info.nodata == -9999.0 and info.dtype == "float32"
    ds = _open(tmp_path / "f.zarr")
    assert list(ds.band.values) == ["red", "nir"]
    assert ds.rio.crs.to_epsg() == 4326 and ds.rio.transform() == info.transform
    assert ds.image.rio.encoded_nodata == -9999.0
    assert np.isnan(ds.image.values[:, :5]).all() and not np.isnan(ds.image.values[:, 5:]).any()
    assert (~ds.mask.values[:5]).all() and ds.mask.values[5:].all()
    assert not every_pixel_valid(tmp_path / "f.zarr")


def test_no_nodata_means_all_valid_and_raw_values(tmp_path, make_geotiff):
    data = np.zeros((1, 20, 20), dtype=np.uint16)
    tif = make_geotiff(tmp_path / "z.tif", data)
    info = ingest_raster(tif, tmp_path / "z.zarr", block=8)
    ds = _open(tmp_path / "z.zarr")
    assert info.nodata is None and ds.image.rio.nodata is None
    assert ds.image.dtype == np.uint16 and ds.mask.values.all()
    assert every_pixel_valid(tmp_path / "z.zarr")


def test_complete_store_is_reused_and_a_changed_source_re_ingested(tmp_path, make_geotiff):
    tif = make_geotiff(tmp_path / "r.tif", np.ones((1, 10, 10), dtype=np.uint8))
    store = tmp_path / "r.zarr"
    ingest_raster(tif, store, block=4)
    stamp = (store / "zarr.json").stat().st_mtime_ns
    ingest_raster(tif, store, block=4)
    assert (store / "zarr.json").stat().st_mtime_ns == stamp
    make_geotiff(tif, np.full((1, 10, 10), 7, dtype=np.uint8))
    os.utime(tif, ns=(stamp + 10**9, stamp + 10**9))
    ingest_raster(tif, store, block=4)
    assert (zarr.open_group(store, mode="r")["image"][:] == 7).all()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_scene_stem():
    assert scene_stem("/data/scene.tif") == "scene"
    assert scene_stem("https://host/a/b/m_4709963.tif?sig=1") == "m_4709963"


# --- bad inputs: clear errors, nothing left behind ---


def _assert_nothing_written(tmp_path, store):
    assert not store.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(store.name)]


def test_not_a_raster(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not an image")
    with pytest.raises(InputError, match=r"notes\.tif: not a readable raster.*GeoTIFF"):
        ingest_raster(bad, tmp_path / "s.zarr", block=64)
    _assert_nothing_written(tmp_path, tmp_path / "s.zarr")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        ingest_raster(tmp_path / "nope.tif", tmp_path / "s.zarr", block=64)


def test_truncated_file(naip, tmp_path):
    cut = tmp_path / "cut.tif"
    cut.write_bytes(naip.read_bytes()[:200_000])
    with pytest.raises(InputError, match=r"cut\.tif: read failed .* truncated or corrupt .*re-download"):
        ingest_raster(cut, tmp_path / "s.zarr", block=256)
    _assert_nothing_written(tmp_path, tmp_path / "s.zarr")


def test_wrong_band_count(landsat, tmp_path):
    with pytest.raises(InputError) as err:
        ingest_raster(landsat, tmp_path / "s.zarr", block=64, in_channels=4, model_name="landcover-unet")
    assert str(err.value).endswith("landsat7_bahamas_rgb.tif: 3 bands, model 'landcover-unet' needs 4 (give an image with 4 bands, repeat bands to make 4 with --bands (e.g. --bands 1,2,3,3), or use a model for 3)")
    with pytest.raises(InputError, match=r"3 bands, model 'x' needs 2 \(pick bands with --bands 1,2\)"):
        probe_raster(landsat, in_channels=2, model_name="x")
    with pytest.raises(InputError, match=r"band\(s\) \[5\] requested but the file has 3"):
        probe_raster(landsat, bands=[1, 5])
    _assert_nothing_written(tmp_path, tmp_path / "s.zarr")


def test_raster_without_crs(tmp_path, make_geotiff):
    tif = make_geotiff(tmp_path / "plain.tif", np.ones((1, 8, 8), dtype=np.uint8), crs=None, transform=Affine.identity())
    with pytest.raises(InputError, match=r"plain\.tif: no CRS.*gdal_edit"):
        ingest_raster(tif, tmp_path / "s.zarr", block=4)
    _assert_nothing_written(tmp_path, tmp_path / "s.zarr")


def _without_geotransform(path, crs=None):
    """A GeoTIFF with no geotransform at all (rasterio warns NotGeoreferencedWarning when opening it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=crs) as dst:
            dst.write(np.ones((1, 8, 8), dtype=np.uint8))
    return path


@pytest.mark.parametrize(("crs", "problem"), [(None, "no CRS"), ("EPSG:32633", "no geotransform")])
def test_not_georeferenced_is_one_clean_error_without_warnings(tmp_path, crs, problem):
    tif = _without_geotransform(tmp_path / "nogeo.tif", crs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=rf"nogeo\.tif: {problem}: the raster is not georeferenced.*gdal_edit"):
            ingest_raster(tif, tmp_path / "s.zarr", block=4)
    assert [str(w.message) for w in caught] == []  # no NotGeoreferencedWarning before the error
    _assert_nothing_written(tmp_path, tmp_path / "s.zarr")


def test_four_bands_with_alpha_and_nodata_ingest_without_warnings(tmp_path, make_geotiff):
    # band 4 tagged alpha (as RGBN files often are) and a nodata value: GDAL masks by nodata and
    # rasterio would warn (NodataShadowWarning) on every tile. Band 4 holds image data (7s), not a
    # mask, so it is a data band (pipeline.raster.probe.alpha_bands).
    data = np.full((4, 40, 40), 7, dtype=np.uint8)
    data[:, :5, :] = 0
    tif = make_geotiff(tmp_path / "rgbn.tif", data, nodata=0, photometric="RGB", alpha="UNSPECIFIED")
    with rasterio.open(tif, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    assert probe_raster(tif).bands == (1, 2, 3, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = ingest_raster(tif, tmp_path / "s.zarr", block=16, bands=(1, 2, 3, 4))
    assert [str(w.message) for w in caught] == []
    assert info.count == 4
    ds = xr.open_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(ds["mask"].values, np.arange(40)[:, None].repeat(40, 1) >= 5)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "s.zarr", mode="r")["image"][...], data)


def test_raster_info_is_frozen(landsat):
    info = probe_raster(landsat)
    assert isinstance(info, RasterInfo)
    with pytest.raises(AttributeError):
        info.width = 3  # type: ignore[misc]


def test_rotated_transform_round_trips(tmp_path, make_geotiff):
    t = Affine(10 * np.cos(0.3), -10 * np.sin(0.3), 500000.0, 10 * np.sin(0.3), -10 * np.cos(0.3), 6000000.0)
    tif = make_geotiff(tmp_path / "rot.tif", np.ones((1, 12, 9), dtype=np.uint8), transform=t)
    info = ingest_raster(tif, tmp_path / "rot.zarr", block=8)
    ds = _open(tmp_path / "rot.zarr")
    assert info.transform == t
    assert ds.rio.transform().almost_equals(t)
    assert ds.rio.crs == info.crs


def test_check_exists_checks_local_paths_only(tmp_path, landsat):
    from pipeline.raster.ingest import check_exists

    check_exists(landsat)
    for remote in ("https://example.com/scene.tif", "s3://bucket/scene.tif", "/vsicurl/https://example.com/scene.tif"):
        check_exists(remote)  # GDAL reports these when it opens them
    with pytest.raises(InputError, match=r"nosuch\.tif: file not found \(check the path\)"):
        check_exists(tmp_path / "nosuch.tif")
