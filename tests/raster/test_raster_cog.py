"""pipeline.raster.cog: label COG on the input grid, colour table, class names, COG layout."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS

from models.spec import ClassInfo
from pipeline.errors import InputError
from pipeline.raster.cog import overview_factors, write_label_cog
from pipeline.raster.ingest import RasterInfo

CLASSES = (ClassInfo(0, "water", "#1f78b4"), ClassInfo(1, "forest", "#33a02c"), ClassInfo(3, "built-up", "#e31a1c"))


def _info(h, w, crs="EPSG:32618", transform=Affine(30.0, 0, 101985.0, 0, -30.0, 2826915.0)):
    return RasterInfo(path="in.tif", width=w, height=h, count=1, dtype="uint8", crs=CRS.from_user_input(crs), transform=transform, nodata=0.0, band_names=("b",), bands=(1,))


def _labels(tmp_path, h, w, chunk):
    rng = np.random.default_rng(0)
    values = rng.choice([0, 1, 3], size=(h, w)).astype(np.uint8)
    labels = zarr.create_array(tmp_path / "l.zarr", shape=(h, w), chunks=(chunk, chunk), dtype="uint8")
    labels[:] = values
    valid = np.ones((h, w), dtype=bool)
    valid[:40, :] = False
    valid[:, -7:] = False
    mask = zarr.create_array(tmp_path / "m.zarr", shape=(h, w), chunks=(chunk, chunk), dtype="bool")
    mask[:] = valid
    return labels, mask, values, valid


def test_cog_grid_values_colours_names_and_layout(tmp_path, cog_layout):
    h, w = 1300, 1500
    labels, mask, values, valid = _labels(tmp_path, h, w, chunk=700)
    info = _info(h, w)
    out = write_label_cog(labels, mask, info, CLASSES, tmp_path / "out" / "scene.labels.tif")
    assert out == tmp_path / "out" / "scene.labels.tif"
    with rasterio.open(out) as src:
        assert (src.width, src.height, src.count, src.dtypes[0]) == (w, h, 1, "uint8")
        assert src.crs == info.crs and src.transform == info.transform
        assert src.nodata == 255
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        assert src.profile["tiled"] and src.block_shapes == [(512, 512)]
        assert src.compression.name.lower() == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2, 4]
        got = src.read(1)
        cmap = src.colormap(1)
        assert src.tags(1)["CLASS_3"] == "built-up"
        assert '"name": "forest"' in src.tags()["SEGPIPE_CLASSES"]
        # overviews are MODE/nearest: only class ids or nodata, never blended values
        assert set(np.unique(src.read(1, out_shape=(h // 4, w // 4)))) <= {0, 1, 3, 255}
    np.testing.assert_array_equal(got[valid], values[valid])
    assert (got[~valid] == 255).all()
    assert cmap[1] == (51, 160, 44, 255) and cmap[3] == (227, 26, 28, 255) and cmap[255][3] == 0
    ifds = cog_layout(out)
    assert [ifd[256][0] for ifd in ifds] == [1500, 750, 375]
    aux = (tmp_path / "out" / "scene.labels.tif.aux.xml").read_text()
    assert "<Category>water</Category>\n      <Category>forest</Category>\n      <Category></Category>\n      <Category>built-up</Category>" in aux
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.labels.tif", "scene.labels.tif.aux.xml"]


def test_small_geographic_cog_without_mask(tmp_path, cog_layout):
    info = _info(90, 120, crs="EPSG:4326", transform=Affine(0.001, 0, 10.0, 0, -0.001, 50.0))
    labels = np.full((90, 120), 1, dtype=np.uint8)
    out = write_label_cog(labels, None, info, CLASSES, tmp_path / "g.tif")
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 4326 and src.transform == info.transform
        assert src.overviews(1) == [] and (src.read(1) == 1).all()
    cog_layout(out)


def test_overview_factors():
    assert overview_factors(512, 512) == []
    assert overview_factors(513, 100) == [2]
    assert overview_factors(100_000, 100_000) == [2, 4, 8, 16, 32, 64, 128, 256]


def test_bad_calls_leave_nothing(tmp_path):
    info = _info(10, 10)
    with pytest.raises(InputError, match="labels shape"):
        write_label_cog(np.zeros((5, 5), np.uint8), None, info, CLASSES, tmp_path / "x.tif")
    with pytest.raises(InputError, match="nodata 1 is also a class id"):
        write_label_cog(np.zeros((10, 10), np.uint8), None, info, CLASSES, tmp_path / "x.tif", nodata=1)

    class Broken:
        shape, dtype, chunks = (10, 10), np.dtype("uint8"), (10, 10)

        def __getitem__(self, key):
            raise OSError("disk gone")

    with pytest.raises(OSError):
        write_label_cog(Broken(), None, info, CLASSES, tmp_path / "x.tif")
    assert list(tmp_path.iterdir()) == []


def test_overviews_are_mode_and_gdal_sees_the_colour_table(tmp_path, caplog):
    # 8x8 blocks of one class, one pixel in each 2x2 cell a different class: MODE gives the block's
    # class at every level, nearest (GDAL samples pixel (1, 1) of each cell) would give the odd one out
    h = w = 2048
    rng = np.random.default_rng(1)
    block_class = rng.choice([0, 1], size=(h // 8, w // 8)).astype(np.uint8)
    values = np.kron(block_class, np.ones((8, 8), dtype=np.uint8))
    values[1::2, 1::2] = 3
    labels = zarr.create_array(tmp_path / "l.zarr", shape=(h, w), chunks=(1024, 1024), dtype="uint8")
    labels[:] = values
    with caplog.at_level("WARNING", logger="rasterio._env"):
        out = write_label_cog(labels, None, _info(h, w), CLASSES, tmp_path / "big.labels.tif")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("rasterio")] == []  # no "palette index ... without a palette"
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2, 4]
    for level, factor in enumerate((2, 4)):
        with rasterio.open(out, overview_level=level) as ovr:
            assert ovr.colorinterp[0] == rasterio.enums.ColorInterp.palette and ovr.colormap(1)[1] == (51, 160, 44, 255)
            got = ovr.read(1)
        expected = np.kron(block_class, np.ones((8 // factor, 8 // factor), dtype=np.uint8))
        np.testing.assert_array_equal(got, expected)
