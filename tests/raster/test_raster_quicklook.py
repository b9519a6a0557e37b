"""pipeline.raster.quicklook: a PNG with the composite, the overlay and a legend, from decimated reads."""

from __future__ import annotations

import numpy as np
import rasterio
import zarr
from matplotlib.image import imread

import pipeline.raster as raster
from models.spec import ClassInfo
from pipeline.raster.cog import write_label_cog
from pipeline.raster.ingest import probe_raster
from pipeline.raster.quicklook import write_quicklook

CLASSES = (ClassInfo(0, "water", "#1f78b4"), ClassInfo(1, "forest", "#33a02c"))


def test_quicklook_png(tmp_path, make_geotiff):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, size=(4, 1500, 700), dtype=np.uint8)
    data[:, :100] = 0
    tif = make_geotiff(tmp_path / "img.tif", data, nodata=0)
    info = probe_raster(tif)
    labels = zarr.create_array(tmp_path / "l.zarr", shape=info.shape, chunks=(512, 512), dtype="uint8")
    labels[:] = (data[3] > 128).astype(np.uint8)
    cog = write_label_cog(labels, None, info, CLASSES, tmp_path / "img.labels.tif")
    png = write_quicklook(tif, cog, CLASSES, tmp_path / "q" / "img.quicklook.png", rgb=[3, 2, 1], max_size=300)
    pixels = imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100
    assert sorted(p.name for p in png.parent.iterdir()) == ["img.quicklook.png"]
    grey = write_quicklook(tif, cog, CLASSES, tmp_path / "grey.png", rgb=[1], max_size=200)
    assert grey.is_file()


def test_package_exports_resolve():
    for name in raster.__all__:
        assert callable(getattr(raster, name))


def test_rgb_bands_follow_colour_interpretation(tmp_path, make_geotiff):
    from rasterio.enums import ColorInterp

    from pipeline.raster.quicklook import rgb_bands

    path = make_geotiff(tmp_path / "bgrn.tif", np.zeros((4, 8, 8), np.uint8))
    assert rgb_bands(path, [1, 2, 3, 4]) == [1, 2, 3]  # no declared colours: first three
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    assert rgb_bands(path, [1, 2, 3, 4]) == [3, 2, 1]
    assert rgb_bands(path, [4, 3, 2]) == [1, 2, 3]  # no blue among the picked bands: first three


def test_preview_from_ingest_matches_the_image(tmp_path, make_geotiff):
    from pipeline.raster.ingest import ingest_raster, read_preview

    data = np.random.default_rng(0).integers(1, 255, (3, 700, 530), dtype=np.uint8)
    path = make_geotiff(tmp_path / "p.tif", data, nodata=0)
    ingest_raster(path, tmp_path / "p.zarr", block=128, preview_size=100)
    image, mask = read_preview(tmp_path / "p.zarr")
    assert np.array_equal(image, data[:, ::7, ::7]) and mask.all()
