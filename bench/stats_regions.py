"""The statistics stage of one scene against many districts: ``pipeline.raster.stats.compute_stats``.

A scene of ``--size`` x ``--size`` pixels at 10 m (UTM 33N), random labels of ``--classes`` classes in
1024-pixel blocks (a zarr array, as the work store holds them), against ``--regions`` Voronoi districts
spread over the scene itself (a stress case: a real 8192^2 scene at 10 m, 82 km across, meets ~50-150 of a
country's 3,000 districts; ``read_regions`` keeps only those). Prints seconds and peak RSS (VmHWM).

    python bench/stats_regions.py [--size 8192] [--regions 3000] [--classes 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import shapely
    import zarr
    from affine import Affine
    from rasterio.crs import CRS

    from models.spec import ClassInfo
    from pipeline.raster.probe import RasterInfo
    from pipeline.raster.regions import Regions
    from pipeline.raster.stats import compute_stats

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--regions", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    n, res = args.size, 10.0
    transform = Affine(res, 0, 500000.0, 0, -res, 5500000.0)
    info = RasterInfo(path="synthetic.tif", width=n, height=n, count=4, dtype="uint16", crs=CRS.from_epsg(32633), transform=transform,
                      nodata=None, band_names=("b1", "b2", "b3", "b4"))  # fmt: skip
    rng = np.random.default_rng(0)
    labels = zarr.create_array(store={}, shape=(n, n), chunks=(1024, 1024), dtype="uint8")
    for r in range(0, n, 1024):
        labels[r : r + 1024] = rng.integers(0, args.classes, (min(1024, n - r), n), dtype=np.uint8)
    x0, y1 = transform.c, transform.f
    box = shapely.box(x0, y1 - n * res, x0 + n * res, y1)
    seeds = shapely.multipoints(np.column_stack([rng.uniform(x0, x0 + n * res, args.regions), rng.uniform(y1 - n * res, y1, args.regions)]))
    cells = [shapely.intersection(c, box) for c in shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=box))]
    regions = Regions(names=tuple(f"district{i:04d}" for i in range(len(cells))), geometries=tuple(cells), source="voronoi")
    classes = [ClassInfo(id=i, name=f"class{i}", color="#000000") for i in range(args.classes)]
    t0 = time.perf_counter()
    ds = compute_stats(labels, None, info, regions, classes)
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(f"{n}x{n} px, {len(cells)} regions, {args.classes} classes: compute_stats {seconds:.1f} s, peak RSS {hwm:.0f} MB, "
          f"area sum / scene area = {float(ds['area_m2'].sum()) / (n * res) ** 2:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
