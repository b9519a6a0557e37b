"""A thin strip's quicklook stays a small PNG: the figure's width follows the image's aspect ratio only up to a bound."""

from __future__ import annotations

import numpy as np
import zarr
from matplotlib.figure import Figure

from models.spec import ClassInfo
from pipeline.raster.cog import write_label_cog
from pipeline.raster.ingest import probe_raster
from pipeline.raster.quicklook import write_quicklook

CLASSES = (ClassInfo(0, "water", "#1f78b4"), ClassInfo(1, "forest", "#33a02c"))


def test_one_row_strip_quicklook_is_bounded(tmp_path, make_geotiff, monkeypatch):
    # a 1 x 300 scene: the figure was 6 in x (300 / 1) wide = 1802 in, a 198,000 x 660 px PNG (over a minute and ~0.5 GB to
    # render); at 1 x 100,000 px it would be a 6,000-inch figure. The label COG was fine, the quicklook held the scene up.
    data = np.random.default_rng(0).integers(1, 255, size=(3, 1, 300), dtype=np.uint8)
    tif = make_geotiff(tmp_path / "strip.tif", data)
    info = probe_raster(tif)
    labels = zarr.create_array(tmp_path / "l.zarr", shape=info.shape, chunks=(64, 64), dtype="uint8")
    labels[:] = (data[0] > 128).astype(np.uint8)
    cog = write_label_cog(labels, None, info, CLASSES, tmp_path / "strip.labels.tif")
    sizes = []
    save = Figure.savefig

    def checked_savefig(fig, *args, **kwargs):
        sizes.append(tuple(fig.get_size_inches() * fig.dpi))
        assert max(sizes[-1]) <= 4000, f"quicklook figure of {sizes[-1]} px"
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checked_savefig)
    png = write_quicklook(tif, cog, CLASSES, tmp_path / "strip.quicklook.png", max_size=300)
    assert png.is_file() and len(sizes) == 1
