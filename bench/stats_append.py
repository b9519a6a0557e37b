"""What one scene's append to ``stats.zarr`` costs as the store grows over nightly runs.

``append_stats`` takes the store's lock and builds the new store under a temporary name, then swaps
it in (atomic; see ``pipeline/stats_store.py``). An append of a scene already in the store, at a new
night after the last one or an existing night, hard-links the old store's chunk files and writes
only the chunk along ``time`` that holds the night (``pipeline.raster.stats._append_fast``); any
other append reads and rewrites the whole store. This builds stores of the given
shapes (nights x scenes x regions x classes) with the variables a real store has, then times one
append and one ``open_stats``. The values are random, so they barely compress: a worst case (real
stores are mostly NaN where a region does not meet a scene, and compress well).

    python bench/stats_append.py [--shapes 100x20x10x8 365x50x20x10 1000x100x50x10]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.raster.provenance import Provenance
from pipeline.raster.stats import _tidy, append_stats
from pipeline.stats_store import open_stats, replace_store

PER_CLASS = ("area_ha", "area_m2", "pixel_count", "share")
PER_REGION = ("nodata_area_m2", "nodata_pixel_count", "region_area_m2")


def synthetic_store(store: Path, nights: int, scenes: int, regions: int, classes: int) -> None:
    """A store of that shape, written as ``append_stats`` writes one (random values, provenance per entry)."""
    rng = np.random.default_rng(0)
    coords = {
        "time": np.datetime64("2025-01-01T02:00", "ns") + np.arange(nights) * np.timedelta64(1, "D"),
        "scene": np.array([f"scene{i:03d}" for i in range(scenes)], dtype=object),
        "region": np.array([f"region{i:03d}" for i in range(regions)], dtype=object),
        "class": np.array([f"class{i}" for i in range(classes)], dtype=object),
    }
    ds = xr.Dataset(
        {name: (("time", "scene", "region", "class"), rng.random((nights, scenes, regions, classes))) for name in PER_CLASS}
        | {name: (("time", "scene", "region"), rng.random((nights, scenes, regions))) for name in PER_REGION}
        | {name: (("time", "scene"), np.full((nights, scenes), value, dtype=object)) for name, value in _provenance().as_dict().items()},
        coords=coords,
    )
    ds = ds.assign_coords(class_id=("class", np.arange(classes)), class_color=("class", np.array(["#000000"] * classes, dtype=object)))
    replace_store(_tidy(ds), store)


def _provenance() -> Provenance:
    return Provenance(source="/data/scene.tif", model="landcover-unet", checkpoint_sha256="0" * 64, regions="/data/districts.gpkg", segpipe_version="0.1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["100x20x10x8", "365x50x20x10", "1000x100x50x10"], help="NIGHTSxSCENESxREGIONSxCLASSES")
    args = parser.parse_args()
    print(f"{'nights x scenes x regions x classes':>36} {'store MB':>9} {'files':>6} {'append s':>9} {'open s':>7}")
    for shape in args.shapes:
        nights, scenes, regions, classes = (int(n) for n in shape.split("x"))
        with tempfile.TemporaryDirectory(prefix="segpipe-stats-bench-") as tmp:
            store = Path(tmp) / "stats.zarr"
            synthetic_store(store, nights, scenes, regions, classes)
            files = [f for f in store.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files) / 1e6
            entry = open_stats(store).isel(time=0, scene=0, drop=True)
            entry = entry.drop_vars([v for v in entry.data_vars if entry[v].dims == ()])
            t0 = time.perf_counter()
            append_stats(entry, store, time=np.datetime64("2030-01-01T02:00"), scene="scene000", provenance=_provenance())
            append_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            open_stats(store)
            open_s = time.perf_counter() - t0
            shutil.rmtree(store, ignore_errors=True)
        print(f"{shape:>36} {size:>9.1f} {len(files):>6} {append_s:>9.2f} {open_s:>7.2f}")
    print("the append is the fast path (hard-linked copy, one chunk along time written); docs/benchmarks.md section 6")


if __name__ == "__main__":
    main()
