"""pipeline.raster.quicklook: a PNG with the composite, the overlay and a legend, from decimated reads."""

from __future__ import annotations

import numpy as np
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
