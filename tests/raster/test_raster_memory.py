"""Memory is bounded by the block, not the image: ingest, COG writing and statistics on a 16x larger
raster allocate (numpy/Python, traced) about the same peak."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from models.spec import ClassInfo
from pipeline.raster.cog import write_label_cog
from pipeline.raster.ingest import ingest_raster
from pipeline.raster.regions import scene_region
from pipeline.raster.stats import compute_stats

CLASSES = (ClassInfo(0, "a"), ClassInfo(1, "b"))
BLOCK = 256


def _big_tif(path, size):
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:3857", nodata=0,
                   transform=Affine(30, 0, 1e6, 0, -30, 6e6), tiled=True, blockxsize=256, blockysize=256)
    rows = np.arange(256)[:, None]
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 256):
            tile = ((rows + r0 + np.arange(size)[None, :]) % 251 + 1).astype(np.uint8)
            dst.write(np.stack([tile] * 3), window=rasterio.windows.Window(0, r0, size, 256))
    return path


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _pipeline_peaks(tmp_path, size):
    tif = _big_tif(tmp_path / f"img{size}.tif", size)
    store = tmp_path / f"img{size}.zarr"
    info = ingest_raster(tif, store, block=BLOCK, preview_size=128)  # warm-up: imports, caches
    # the quicklook preview is bounded by its own size (128^2 here, 1024^2 by default), not the image
    peaks = {"ingest": _peak(lambda: ingest_raster(tif, tmp_path / f"again{size}.zarr", block=BLOCK, preview_size=128))}
    group = zarr.open_group(store, mode="r")
    labels = zarr.create_array(tmp_path / f"lab{size}.zarr", shape=info.shape, chunks=(BLOCK, BLOCK), dtype="uint8")
    for r0 in range(0, size, BLOCK):
        labels[r0 : r0 + BLOCK] = (group["image"][0, r0 : r0 + BLOCK] > 128).astype(np.uint8)
    peaks["cog"] = _peak(lambda: write_label_cog(labels, group["mask"], info, CLASSES, tmp_path / f"l{size}.tif"))
    peaks["stats"] = _peak(lambda: compute_stats(labels, group["mask"], info, scene_region(info), CLASSES, block=BLOCK))
    return peaks


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_image(tmp_path):
    small = _pipeline_peaks(tmp_path, 512)
    large = _pipeline_peaks(tmp_path, 2048)  # 16x the pixels
    whole_image = 3 * 2048 * 2048
    for stage in small:
        assert large[stage] < 0.5 * whole_image, (stage, large[stage])
        assert large[stage] < 2.5 * small[stage] + 2**20, (stage, small[stage], large[stage])
