"""What counts as nodata and what the model sees there (pipeline.raster.ingest masks, pipeline.raster.fill).

The model never sees an invalid value: NaN, a declared nodata value (per band), a masked or
transparent pixel all reach the model as the value the spec's normalisation maps to 0. Checked with
a model that is not per-pixel (a 3x3 convolution), whose labels near a hole depend on what the hole
holds, against a torch computation on the image with the neutral value in the hole.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
import zarr
from rasterio.enums import ColorInterp

from models.spec import spec_from_dict
from pipeline.errors import InputError
from pipeline.raster.ingest import band_stats, every_pixel_valid, ingest_raster, probe_raster
from pipeline.raster.run import segment_raster

CLASSES = [{"id": 0, "name": "water", "color": "#1f78b4"}, {"id": 1, "name": "forest", "color": "#33a02c"}, {"id": 5, "name": "urban", "color": "#e31a1c"}]
IDS = np.array([c["id"] for c in CLASSES])
BIAS = [0.5, 0.25, 0.0]  # logits are integers plus these: exact in float32 and never tied
SHAPE = (40, 48)
HOLES = (np.s_[18:22, 20:24], np.s_[0:2, 0:3])  # one inside, one on the image's corner


def spec(in_channels=4, *, kernel=3, window=SHAPE, normalize=None):
    return spec_from_dict({
        "name": "conv", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": in_channels, "out_channels": 3, "kernel_size": kernel, "padding": kernel // 2},
        "in_channels": in_channels, "classes": CLASSES, "window": list(window), "overlap": 0.25,
        "normalize": normalize or {"kind": "none"},
    })


def conv_model(in_channels=4, kernel=3, seed=0) -> torch.nn.Conv2d:
    """A convolution with small integer weights: each label depends on its 3x3 neighbourhood."""
    rng = np.random.default_rng(seed)
    conv = torch.nn.Conv2d(in_channels, 3, kernel_size=kernel, padding=kernel // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(rng.integers(-2, 3, (3, in_channels, kernel, kernel)), dtype=torch.float32))
        conv.bias.copy_(torch.tensor(BIAS))
    return conv.eval()


def reference(pixels: np.ndarray, model: torch.nn.Module, mean, std) -> np.ndarray:
    """Labels of ``model`` on the whole normalised image ``(C, Y, X)`` (one window: no blending)."""
    x = (pixels.astype(np.float64) - np.asarray(mean, dtype=np.float64)[:, None, None]) / np.asarray(std, dtype=np.float64)[:, None, None]
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    return IDS[np.argmax(logits, axis=0)]


def scene(dtype, seed=1, channels=4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 21, (channels, *SHAPE)).astype(dtype)


def labels_of(result) -> np.ndarray:
    with rasterio.open(result.labels_path) as src:
        return src.read(1)


# mean 10.5, std 0.5 maps integers to integers; a non-integer mean is not stored in an integer
# image: the filled region is read as float32 (FilledImage); integer means fill in the image's dtype
MEANSTD = {"kind": "meanstd", "mean": [10.5, 8.5, 12.5, 5.5], "std": [0.5, 0.5, 0.5, 0.5]}
MEANSTD_INT = {"kind": "meanstd", "mean": [10, 8, 12, 5], "std": [1, 1, 1, 1]}


@pytest.mark.parametrize(
    ("dtype", "nodata", "normalize"),
    [("float32", np.nan, MEANSTD), ("float32", -9999.0, MEANSTD), ("int16", -9999, MEANSTD), ("uint16", 65535, MEANSTD_INT)],
    ids=["float-nan", "float-9999", "int16-9999-float-fill", "uint16-integer-fill"],
)
def test_nodata_values_never_reach_a_convolution(tmp_path, make_geotiff, dtype, nodata, normalize):
    """Labels of valid pixels equal the convolution of the image with the band mean (meanstd's
    neutral value) in the holes, whatever the holes hold; the holes are nodata (255)."""
    pixels = scene(dtype)
    holed = pixels.copy()
    for hole in HOLES:
        holed[(slice(None), *hole)] = nodata
    tif = make_geotiff(tmp_path / "holed.tif", holed, nodata=nodata)
    model = conv_model()
    result = segment_raster(tif, spec(normalize=normalize), tmp_path / "out", block=32, device="cpu", model=model, time="2024-06-01")
    labels = labels_of(result)

    invalid = np.zeros(SHAPE, dtype=bool)
    for hole in HOLES:
        invalid[hole] = True
    neutral = pixels.astype(np.float64)
    neutral[:, invalid] = np.asarray(normalize["mean"], dtype=np.float64)[:, None]
    expected = reference(neutral, model, normalize["mean"], normalize["std"])
    np.testing.assert_array_equal(labels[~invalid], expected[~invalid])
    assert (labels[invalid] == 255).all()
    assert len(np.unique(labels[~invalid])) == 3
    # not vacuous: the raw fill value (as the model used to see it) changes valid labels next to the holes
    raw = pixels.astype(np.float64)
    raw[:, invalid] = -9999.0
    assert (reference(raw, model, normalize["mean"], normalize["std"]) != expected)[~invalid].any()
    # and the holes count in no class
    assert float(result.stats["nodata_pixel_count"].sum()) == invalid.sum()
    assert float(result.stats["pixel_count"].sum()) == (~invalid).sum()


@pytest.mark.parametrize("kind", ["scale", "window", "zscore"])
def test_each_normalisation_fills_with_the_value_it_maps_to_zero(tmp_path, make_geotiff, kind):
    """scale: 0; window: its min; zscore: each band's mean over its valid values (holes excluded)."""
    pixels = scene("float32", seed=2)
    holed = pixels.copy()
    holed[:, 10:14, 30:34] = np.nan
    invalid = np.isnan(holed[0])
    normalize = {"scale": {"kind": "scale", "factor": 0.5}, "window": {"kind": "window", "min": 4, "max": 12}, "zscore": {"kind": "zscore"}}[kind]
    tif = make_geotiff(tmp_path / "holed.tif", holed)  # no declared nodata: NaN is invalid all the same
    model = conv_model()
    out = tmp_path / "out"
    result = segment_raster(tif, spec(normalize=normalize), out, block=32, device="cpu", model=model, time="2024-06-01", keep_work=True)
    labels = labels_of(result)
    x = pixels.astype(np.float64)
    if kind == "scale":
        x[:, invalid] = 0.0
        mean, std = [0.0] * 4, [2.0] * 4
    elif kind == "window":
        x = np.clip(x, 4, 12)
        x[:, invalid] = 4.0
        mean, std = [4.0] * 4, [8.0] * 4
    else:
        mean = [float(pixels[c][~invalid].mean(dtype=np.float64)) for c in range(4)]
        std = [float(pixels[c][~invalid].std(dtype=np.float64)) for c in range(4)]
        np.testing.assert_allclose(band_stats(out / ".work" / "holed.zarr")["mean"], mean, rtol=1e-12)  # the holes are not averaged in
        x[:, invalid] = np.asarray(mean)[:, None]
    with torch.no_grad():
        xn = (x - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
        logits = model(torch.tensor(xn, dtype=torch.float32)[None])[0].numpy()
    expected = IDS[np.argmax(logits, axis=0)]
    if kind == "zscore":  # float statistics: compare where the decision is not a rounding tie
        top = np.sort(logits, axis=0)
        clear = (top[-1] - top[-2] > 1e-3) & ~invalid
        assert clear.sum() > 0.95 * (~invalid).sum()
        np.testing.assert_array_equal(labels[clear], expected[clear])
    else:
        np.testing.assert_array_equal(labels[~invalid], expected[~invalid])
    assert (labels[invalid] == 255).all()


def _holed_scene(tmp_path, make_geotiff):
    pixels = scene("float32", seed=3)
    holed = pixels.copy()
    holed[:, 20:26, 10:15] = -9999.0
    holed[:, 33:40, 40:48] = -9999.0
    holed[:, 24:40, 0:17] = -9999.0  # a collar: the window at (24, 0) holds no valid pixel and is left out
    tif = make_geotiff(tmp_path / "holed.tif", holed, nodata=-9999.0)
    invalid = holed[0] == -9999.0
    return tif, pixels, invalid


def _engine_on_filled(pixels, invalid, config, model, normalize):
    """The engine itself on the in-memory image with the neutral value (meanstd: the mean) in the holes."""
    from models.normalize import normalizer
    from pipeline.engine import run_engine

    filled = pixels.copy()
    filled[:, invalid] = np.asarray(normalize["mean"], dtype=np.float32)[:, None]
    out = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=config.block, dtype="uint8", fill_value=0)
    run_engine(filled, model, config, out, preprocess=normalizer(spec(normalize=normalize).normalize))
    labels = out[...]
    labels[invalid] = 255
    return labels


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["dask-threads", "dask-processes"])
def test_overlapping_windows_see_the_neutral_value_locally_and_on_dask(tmp_path, make_geotiff, processes):
    """Several blended windows and blocks: the labels are the engine's on the neutral-filled image,
    run locally and on Dask workers (which read the work store themselves, through a FilledRef)."""
    import distributed

    from pipeline.engine import EngineConfig

    tif, pixels, invalid = _holed_scene(tmp_path, make_geotiff)
    model = conv_model(seed=5)
    s = spec(window=(16, 16), normalize=MEANSTD)
    result = segment_raster(tif, s, tmp_path / "local", block=16, device="cpu", model=model, time="2024-06-01")
    assert result.engine.windows_run < result.engine.windows_total  # the collar's window was left out
    local = labels_of(result)
    config = EngineConfig(window=(16, 16), overlap=0.25, blend="gaussian", block=(16, 16), device="cpu", class_ids=tuple(IDS), label_dtype="uint8")
    np.testing.assert_array_equal(local, _engine_on_filled(pixels, invalid, config, model, MEANSTD))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=processes, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            remote = segment_raster(tif, s, tmp_path / "dask", block=16, device="cpu", model=model, dask_client=client, time="2024-06-01")
    np.testing.assert_array_equal(labels_of(remote), local)


def test_a_work_store_of_the_old_layout_is_ingested_again(tmp_path, make_geotiff):
    """Resume: a work store whose pixels or labels were made another way (an older segpipe fed the
    raw nodata to the model) is not reused; its labels are redone."""
    from pipeline.raster.ingest import STORE_ATTR

    tif, pixels, invalid = _holed_scene(tmp_path, make_geotiff)
    model = conv_model(seed=5)
    s = spec(window=(16, 16), normalize=MEANSTD)
    out = tmp_path / "out"
    first = labels_of(segment_raster(tif, s, out, block=16, device="cpu", model=model, time="2024-06-01", keep_work=True))
    work = out / ".work" / "holed.zarr"
    group = zarr.open_group(work, mode="r+", use_consolidated=False)
    group["labels"][...] = np.ones(SHAPE, dtype=np.uint8)  # what stale labels would hold
    attrs = group.attrs[STORE_ATTR]
    attrs["signature"] = {k: v for k, v in attrs["signature"].items() if k != "layout"}  # as written before band_mask
    group.attrs[STORE_ATTR] = attrs
    zarr.consolidate_metadata(work)
    again = labels_of(segment_raster(tif, s, out, block=16, device="cpu", model=model, time="2024-06-02", keep_work=True))
    np.testing.assert_array_equal(again, first)
    assert zarr.open_group(work, mode="r").attrs[STORE_ATTR]["signature"]["layout"] >= 2


def test_labels_fingerprint_names_the_fill():
    """Labels kept for resume record the values the model saw in the holes: other values, other labels."""
    from types import SimpleNamespace

    from pipeline.raster.segment import _fingerprint

    s, info = spec(normalize=MEANSTD), SimpleNamespace(bands=(1, 2, 3, 4))
    assert _fingerprint(s, info, 32, "uint8", (1.0, 2.0, 3.0, 4.0)) != _fingerprint(s, info, 32, "uint8", (0.0, 2.0, 3.0, 4.0))


# --- fix 2: NaN and inf are invalid in float rasters, declared nodata or not ---


def test_nan_and_inf_without_declared_nodata_are_nodata(tmp_path, make_geotiff):
    pixels = scene("float32", seed=4, channels=3)
    data = pixels.copy()
    data[:, 5:25, 5:25] = np.nan  # 400 pixels, every band
    data[:, 30, 40] = np.inf
    data[:, 31, 41] = -np.inf
    data[1, 35, 10] = np.nan  # one band only: the pixel stays valid, that band reads as neutral
    tif = make_geotiff(tmp_path / "nan.tif", data)
    weight = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    result = segment_raster(tif, spec(3, kernel=1), tmp_path / "out", block=32, device="cpu", model=_pixel_model(weight), time="2024-06-01")
    labels = labels_of(result)
    invalid = ~np.isfinite(data).any(axis=0)
    assert invalid.sum() == 402
    assert (labels[invalid] == 255).all() and (labels[~invalid] != 255).all()
    assert float(result.stats["nodata_pixel_count"].sum()) == 402
    assert float(result.stats["pixel_count"].sum()) == SHAPE[0] * SHAPE[1] - 402
    filled = np.where(np.isfinite(data), data, 0.0)  # normalize none: neutral 0
    expected = IDS[np.argmax(np.einsum("kc,cyx->kyx", np.asarray(weight), filled) + np.asarray(BIAS)[:, None, None], axis=0)]
    np.testing.assert_array_equal(labels[~invalid], expected[~invalid])
    store = tmp_path / "s.zarr"
    ingest_raster(tif, store, block=16)
    means = band_stats(store)["mean"]
    assert np.isfinite(means).all()
    np.testing.assert_allclose(means, [float(data[c][np.isfinite(data[c])].mean(dtype=np.float64)) for c in range(3)], rtol=1e-12)
    assert not every_pixel_valid(store)
    ds = xr.open_zarr(store)
    np.testing.assert_array_equal(ds["band_mask"].values, np.isfinite(data))


def _pixel_model(weight) -> torch.nn.Conv2d:
    w = torch.tensor(weight, dtype=torch.float32)
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
        conv.bias.copy_(torch.tensor(BIAS))
    return conv.eval()


# --- fix 3: per-band nodata; a pixel is nodata only when every band is ---


def _per_band_vrt(tmp_path, make_geotiff, data):
    tif = make_geotiff(tmp_path / "bands.tif", data)
    with rasterio.open(tif) as src:
        srs = src.crs.to_wkt().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        gt = ", ".join(repr(v) for v in src.transform.to_gdal())
    h, w = data.shape[1:]
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>{b - 1}</NoDataValue><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">bands.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/></SimpleSource></VRTRasterBand>'
        for b in (1, 2, 3)
    )
    vrt = tmp_path / "perband.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{srs}</SRS><GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>')
    return vrt


def test_per_band_nodata_feeds_the_neutral_value_for_the_invalid_bands_only(tmp_path, make_geotiff):
    """VRT with nodata 0, 1, 2 on bands 1-3: a pixel with some bands at their nodata value keeps
    its label, computed with the neutral value (meanstd: the mean) in those bands; a pixel with
    every band at nodata is nodata."""
    data = np.random.default_rng(6).integers(10, 200, (3, *SHAPE)).astype(np.uint8)
    data[0, :10] = 0  # band 1 nodata in rows 0-9
    data[1, :20] = 1  # band 2 nodata in rows 0-19
    data[2, :5] = 2  # band 3 nodata in rows 0-4: rows 0-4 are nodata in every band
    vrt = _per_band_vrt(tmp_path, make_geotiff, data)
    normalize = {"kind": "meanstd", "mean": [100.5, 50.5, 80.5], "std": [0.5, 0.5, 0.5]}
    weight = [[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]]
    model = _pixel_model(weight)
    result = segment_raster(vrt, spec(3, kernel=1, normalize=normalize), tmp_path / "out", block=32, device="cpu", model=model, time="2024-06-01")
    labels = labels_of(result)
    band_valid = np.stack([data[c] != c for c in range(3)])
    invalid = ~band_valid.any(axis=0)
    assert invalid[:5].all() and not invalid[5:].any()
    x = (data.astype(np.float64) - np.asarray(normalize["mean"])[:, None, None]) / 0.5
    x[~band_valid] = 0.0  # the neutral value, normalised
    expected = IDS[np.argmax(np.einsum("kc,cyx->kyx", np.asarray(weight), x) + np.asarray(BIAS)[:, None, None], axis=0)]
    partial = band_valid.any(axis=0) & ~band_valid.all(axis=0)
    assert partial.sum() == 15 * SHAPE[1]
    np.testing.assert_array_equal(labels[~invalid], expected[~invalid])
    assert (labels[invalid] == 255).all()
    assert float(result.stats["nodata_pixel_count"].sum()) == invalid.sum()


def test_dark_rgb_pixel_with_one_zero_band_is_not_nodata(tmp_path, make_geotiff):
    data = np.random.default_rng(7).integers(1, 255, (3, *SHAPE)).astype(np.uint8)
    data[:, 0, :] = 0  # nodata row
    data[0, 1, :] = 0  # dark pixels: red 0, others not
    tif = make_geotiff(tmp_path / "rgb.tif", data, nodata=0)
    weight = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    result = segment_raster(tif, spec(3, kernel=1), tmp_path / "out", block=32, device="cpu", model=_pixel_model(weight), time="2024-06-01")
    labels = labels_of(result)
    assert (labels[0] == 255).all() and (labels[1:] != 255).all()
    assert float(result.stats["nodata_pixel_count"].sum()) == SHAPE[1]


# --- fix 4: alpha bands ---


def _rgba(tmp_path, make_geotiff, nodata=None):
    data = np.random.default_rng(8).integers(1, 255, (4, *SHAPE)).astype(np.uint8)
    data[3] = 255
    data[3, :, :12] = 0  # transparent columns 0-11
    if nodata is not None:
        data[:3, 30:, 30:] = nodata  # nodata in the opaque part too
    tif = make_geotiff(tmp_path / "rgba.tif", data, photometric="RGB", alpha="YES", nodata=nodata)
    with rasterio.open(tif) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    return tif, data


def test_alpha_band_is_not_a_data_band_and_its_count_error_suggests_bands(tmp_path, make_geotiff):
    tif, _ = _rgba(tmp_path, make_geotiff)
    assert probe_raster(tif).bands == (1, 2, 3)
    with pytest.raises(InputError) as caught:
        probe_raster(tif, in_channels=4, model_name="rgbn")
    message = str(caught.value)
    assert "3 data band(s) plus an alpha band (band 4), model 'rgbn' needs 4" in message
    assert "--bands 1,2,3,3" in message and "--bands 1,2,3,4" in message


@pytest.mark.parametrize("nodata", [None, 0])
def test_transparent_pixels_are_nodata(tmp_path, make_geotiff, nodata):
    """alpha 0 is nodata, also next to a declared nodata value (where GDAL's masks ignore alpha)."""
    tif, data = _rgba(tmp_path, make_geotiff, nodata=nodata)
    weight = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    result = segment_raster(tif, spec(3, kernel=1), tmp_path / "out", block=32, device="cpu", model=_pixel_model(weight), time="2024-06-01")
    labels = labels_of(result)
    invalid = data[3] == 0
    if nodata is not None:
        invalid |= (data[:3] == nodata).all(axis=0)
    assert (labels[invalid] == 255).all() and (labels[~invalid] != 255).all()
    assert float(result.stats["nodata_pixel_count"].sum()) == invalid.sum()


def test_alpha_band_named_in_bands_is_data(tmp_path, make_geotiff):
    """An RGBN file whose near-infrared band is tagged alpha (GDAL's default for 4-band 8-bit
    GeoTIFFs): --bands 1,2,3,4 feeds band 4 as data, and it marks nothing transparent."""
    tif, data = _rgba(tmp_path, make_geotiff)
    weight = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    result = segment_raster(
        tif, spec(4, kernel=1), tmp_path / "out", block=32, device="cpu", bands=(1, 2, 3, 4), model=_pixel_model(weight), time="2024-06-01"
    )
    labels = labels_of(result)
    expected = IDS[np.argmax(np.einsum("kc,cyx->kyx", np.asarray(weight), data.astype(np.float64)) + np.asarray(BIAS)[:, None, None], axis=0)]
    np.testing.assert_array_equal(labels, expected)
    assert (labels != 255).all()


def test_a_band_tagged_alpha_that_holds_image_data_is_a_data_band(tmp_path, make_geotiff):
    """GDAL (and rasterio's defaults) tag band 4 of any 4-band 8-bit GeoTIFF alpha: an RGBN scene
    written that way was refused ("3 data band(s) plus an alpha band") by a 4-band model. A tagged
    band holding a range of values is image data; one holding 0 / 255 only stays alpha (above)."""
    data = np.random.default_rng(9).integers(1, 255, (4, *SHAPE)).astype(np.uint8)
    tif = make_geotiff(tmp_path / "rgbn.tif", data)  # GDAL's defaults: RGB + alpha
    with rasterio.open(tif) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    assert probe_raster(tif, in_channels=4).bands == (1, 2, 3, 4)
    weight = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    result = segment_raster(tif, spec(4, kernel=1), tmp_path / "out", block=32, device="cpu", model=_pixel_model(weight), time="2024-06-01")
    expected = IDS[np.argmax(np.einsum("kc,cyx->kyx", np.asarray(weight), data.astype(np.float64)) + np.asarray(BIAS)[:, None, None], axis=0)]
    np.testing.assert_array_equal(labels_of(result), expected)


def test_quicklook_colours_skip_alpha_bands(tmp_path, make_geotiff):
    from pipeline.raster.quicklook import rgb_bands

    tif = make_geotiff(tmp_path / "gaaa.tif", np.ones((4, 8, 8), dtype=np.uint16))
    with rasterio.open(tif, "r+") as dst:
        dst.colorinterp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.alpha, ColorInterp.undefined]
    assert rgb_bands(tif, (1, 2, 3, 4)) == [1, 2, 4]
    assert rgb_bands(tif, (3, 1)) == [2]
