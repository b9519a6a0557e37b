"""``stats.zarr`` at operational scale: a country's ~3,000 districts, 50-100 scenes a night, kept for years.

Builds stores of ``nights x scenes x regions x classes`` in the layout the installed segpipe writes
(``replace_store`` writes a one-night store, whose arrays are then grown along ``time`` chunk by chunk
with zarr, the way nightly appends grow them), then measures, each in a fresh process (seconds and
peak RSS, ``ru_maxrss``):

* ``append new night``: the night's first scene, a night after the last one (``append_stats``);
* ``append Nth scene``: the night's last scene, at that night (every other scene of the night in the store);
* ``append new scene``: a scene the store does not hold yet, at the last night (the whole rewrite: every array
  grows along ``scene``);
* ``query last 30``: the README's query: ``xr.open_zarr`` + ``sel`` class and region + the last 30 nights
  + ``sum("scene", min_count=1)``, computed;
* ``area_over_time``: ``pipeline.raster.stats.area_over_time(store, class, region)``;
* ``run pre-check``: what ``segpipe raster`` reads from the store before each scene
  (``pipeline.raster.run`` reads a snapshot of it for its checks).

Values are realistic in sparsity: each scene meets a band of ~1.5x regions/scenes districts (its
footprint), NaN elsewhere, as ``append_stats`` stores entries of the regions meeting a scene; the
values there are random (a worst case for compression). Each child process runs under an address
space limit (``--limit-gb``) so a read of the whole store fails with MemoryError instead of taking the
machine; such a cell reads ``MemoryError``.

    python bench/stats_scale.py [--shapes 365x50x3000x10 365x100x3000x10] [--limit-gb 12] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _child_runs import build_store, child_main
from _child_runs import measure as run_measured

PER_CLASS = ("area_ha", "area_m2", "pixel_count", "share")
PER_REGION = ("nodata_area_m2", "nodata_pixel_count", "region_area_m2", "region_total_area_m2")
OPS = ("append new night", "append Nth scene", "append new scene", "query last 30", "area_over_time", "run pre-check")


def _provenance():
    from pipeline.raster.provenance import Provenance

    return Provenance(source="/data/scene.tif", model="landcover-unet", checkpoint_sha256="0" * 64, regions="/data/districts.gpkg",
                      segpipe_version="0.1", inputs_sha256="1" * 64)  # fmt: skip


def _met(scene: int, scenes: int, regions: int) -> slice:
    """The regions scene ``scene`` meets: a band of ~1.5 x regions/scenes (neighbouring scenes overlap)."""
    width = regions / scenes
    return slice(max(int(scene * width - width / 4), 0), min(int((scene + 1) * width + width / 4), regions))


def entry(scene: int, scenes: int, regions: int, classes: int, rng: np.random.Generator):
    """One scene's ``compute_stats`` output: the regions it meets (dims region, class)."""
    import xarray as xr

    met = _met(scene, scenes, regions)
    n = met.stop - met.start
    area = rng.random((n, classes)) * 1e6
    return xr.Dataset(
        {
            "area_m2": (("region", "class"), area, {"units": "m2", "long_name": "ellipsoidal area per class"}),
            "area_ha": (("region", "class"), area / 1e4, {"units": "ha"}),
            "pixel_count": (("region", "class"), area / 100, {"units": "pixels", "long_name": "pixels weighted by region coverage fraction"}),
            "share": (("region", "class"), area / area.sum(axis=1, keepdims=True), {"units": "1", "long_name": "fraction of the region's valid area"}),
            "nodata_area_m2": ("region", rng.random(n), {"units": "m2"}),
            "nodata_pixel_count": ("region", rng.random(n), {"units": "pixels"}),
            "region_area_m2": ("region", area.sum(axis=1), {"units": "m2", "long_name": "region area inside the scene, nodata included"}),
            "region_total_area_m2": ("region", area.sum(axis=1) * 2, {"units": "m2", "long_name": "whole region area, inside and outside the scene"}),
        },
        coords={
            "region": np.array([f"district{i:04d}" for i in range(met.start, met.stop)], dtype=object),
            "class": np.array([f"class{i}" for i in range(classes)], dtype=object),
            "class_id": ("class", np.arange(classes)),
            "class_color": ("class", np.array(["#000000"] * classes, dtype=object)),
        },
        attrs={"coverage": "exact fractional coverage of pixels by regions (exactextract)"},
    )


def night(i: int) -> np.datetime64:
    return np.datetime64("2025-01-01T02:00:00", "ns") + i * np.timedelta64(1, "D")


def build(store: Path, nights: int, scenes: int, regions: int, classes: int) -> None:
    """A store of that shape in the layout ``replace_store`` writes, grown to ``nights`` with zarr."""
    import xarray as xr
    import zarr

    from pipeline.raster.stats import TIME_ATTRS, _tidy
    from pipeline.stats_store import TIME_DIM, record_chunk_sizes, replace_store

    rng = np.random.default_rng(0)
    names = np.array([f"district{i:04d}" for i in range(regions)], dtype=object)
    values = {name: np.full((1, scenes, regions, classes), np.nan) for name in PER_CLASS}
    values |= {name: np.full((1, scenes, regions), np.nan) for name in PER_REGION}
    for s in range(scenes):
        e, met = entry(s, scenes, regions, classes, rng), _met(s, scenes, regions)
        for name in values:
            values[name][0, s, met] = e[name].values
    ds = xr.Dataset(
        {name: (("time", "scene", "region", "class")[: v.ndim], v, e[name].attrs) for name, v in values.items()}
        | {k: (("time", "scene"), np.full((1, scenes), v, dtype=object)) for k, v in _provenance().as_dict().items()},
        coords={"time": [night(0)], "scene": np.array([f"scene{s:03d}" for s in range(scenes)], dtype=object), "region": names,
                "class": e["class"].values, "class_id": e["class_id"], "class_color": e["class_color"]},  # fmt: skip
        attrs=e.attrs,
    )
    ds["time"].attrs.update(TIME_ATTRS)
    replace_store(_tidy(ds), store)  # one night, every variable in the layout of the segpipe installed
    del ds, values
    with zarr.config.set({"array.write_empty_chunks": True}):
        group = zarr.open_group(store, mode="r+")
        for name, array in group.arrays():
            dims = tuple(array.metadata.dimension_names or ())
            if name == TIME_DIM or TIME_DIM not in dims:
                continue
            step = array.chunks[0]
            first = np.asarray(array[0:1])
            array.resize((nights, *array.shape[1:]))
            block = np.repeat(first, min(step, nights), axis=0)
            if block.dtype.kind == "f":  # other values each night (NaN stays NaN): repeated nights would compress away
                block *= rng.random(block.shape)
            array[0:min(step, nights)] = block  # chunk 0 along time, written by zarr
            del block
            sep = array.metadata.chunk_key_encoding.separator
            chunk0 = [p for p in (store / name).rglob("*") if p.is_file() and p.relative_to(store / name).parts[0].startswith("c")]
            chunk0 = [p for p in chunk0 if str(p.relative_to(store / name)).replace("/", ".").split(".")[1] == "0"]
            for t in range(1, -(-nights // step)):  # the other chunks along time: the same encoded bytes
                for p in chunk0:
                    key = str(p.relative_to(store / name)).replace("/", ".").split(".")
                    key[1] = str(t)
                    dst = store / name / sep.join(key)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(p, dst)
        old = group[TIME_DIM]
        times = np.asarray(old[0]) + np.arange(nights, dtype=old.dtype) * (86400 if "seconds" in old.attrs.get("units", "") else 86400 * 10**9)
        zarr.create_array(str(store), name=TIME_DIM, data=times, chunks=times.shape, fill_value=old.fill_value, attributes=old.attrs.asdict(),
                          dimension_names=(TIME_DIM,), compressors=old.compressors, serializer=old.serializer,
                          chunk_key_encoding=old.metadata.chunk_key_encoding, overwrite=True)  # fmt: skip
    record_chunk_sizes(store)
    zarr.consolidate_metadata(str(store), zarr_format=3)


def op(name: str, store: Path, nights: int, scenes: int, regions: int, classes: int) -> dict:
    """Run one operation in this process; its seconds."""
    import warnings

    import xarray as xr

    warnings.simplefilter("ignore")
    from pipeline.raster.stats import append_stats, area_over_time

    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    if name == "append new night":
        append_stats(entry(0, scenes, regions, classes, rng), store, time=night(nights), scene="scene000", provenance=_provenance())
    elif name == "append Nth scene":
        s = scenes - 1
        append_stats(entry(s, scenes, regions, classes, rng), store, time=night(nights - 1), scene=f"scene{s:03d}", provenance=_provenance())
    elif name == "append new scene":
        append_stats(entry(scenes - 1, scenes, regions, classes, rng), store, time=night(nights - 1), scene=f"scene{scenes:03d}", provenance=_provenance())
    elif name == "query last 30":
        ds = xr.open_zarr(store)
        forest = ds["area_ha"].sel(**{"class": "class1"}, region=f"district{regions // 2:04d}")
        since = ds.time.values[-1] - np.timedelta64(30, "D")
        forest.sel(time=slice(since, None)).sum("scene", min_count=1).compute()
    elif name == "area_over_time":
        area_over_time(store, "class1", f"district{regions // 2:04d}", scene=f"scene{scenes // 2:03d}")
    elif name == "run pre-check":
        from pipeline.raster import entries

        read = getattr(entries, "provenance_snapshot", None)  # what pipeline.raster.run reads before each scene
        if read is None:  # segpipe before it: the whole store
            from pipeline.stats_store import open_stats as read
        read(store)
    return {"s": time.perf_counter() - t0}


def child(args) -> None:
    child_main(args, build, op)


def measure(what: str, store: Path, shape: str, limit_gb: float) -> dict:
    """``what`` in a fresh process, on a copy of ``store`` where it appends (changes the store)."""
    return run_measured(__file__, what, store, shape, limit_gb, changes_store=what.startswith("append"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["365x50x3000x10", "365x100x3000x10"], help="NIGHTSxSCENESxREGIONSxCLASSES")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, metavar="OP", help=f"of: {', '.join(OPS)}")
    parser.add_argument("--limit-gb", type=float, default=12.0, help="address space limit of each measured process (GB)")
    parser.add_argument("--dir", default=None, help="folder for the stores (default: the system's temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import warnings

    warnings.simplefilter("ignore")  # zarr's notes on fixed-width strings and consolidated metadata
    print(f"{'nights x scenes x regions x classes':>36} {'store MB':>9} {'files':>7} {'dense GB':>9}  {'operation':<17} {'s':>7} {'peak RSS MB':>12}")
    for shape in args.shapes:
        nights, scenes, regions, classes = (int(n) for n in shape.split("x"))
        with tempfile.TemporaryDirectory(prefix="segpipe-stats-scale-", dir=args.dir) as tmp:
            store = Path(tmp) / "stats.zarr"
            built = build_store(__file__, store, shape, 20)
            files = [f for f in store.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files) / 1e6
            dense = nights * scenes * regions * (classes * len(PER_CLASS) + len(PER_REGION)) * 8 / 1e9
            for what in args.ops:
                r = measure(what, store, shape, args.limit_gb)
                s = "-" if r.get("s") is None else f"{r['s']:.2f}"
                rss = "-" if r.get("rss_mb") is None else f"{r['rss_mb']:.0f}"
                note = f"  {r['error']}" if r.get("error") else ""
                print(f"{shape:>36} {size:>9.1f} {len(files):>7} {dense:>9.1f}  {what:<17} {s:>7} {rss:>12}{note}", flush=True)
            print(f"{'':>36} (store built in {built:.0f} s)", flush=True)
    print(f"peak RSS of a process that only imports segpipe's stats: ~{_baseline():.0f} MB")


def _baseline() -> float:
    code = "import sys, xarray, zarr, pipeline.raster.stats; sys.path.insert(0, 'bench'); import _child_runs; print(_child_runs.peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, cwd=Path(__file__).parents[1])
    return float(out.stdout.strip() or "nan")


if __name__ == "__main__":
    main()
