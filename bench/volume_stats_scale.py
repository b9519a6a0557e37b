"""The volume ``stats.zarr`` at hospital scale: 1,000-50,000 studies of TotalSegmentator's ``total`` task (118 labels).

Builds a store of ``studies x labels`` in the layout the segpipe under test writes (the Dataset that
``merge_into_store`` would have made of those studies, written by the tree's whole-store writer:
``pipeline.volume.stats_layout.write_store`` where it exists, else ``pipeline.stats_store.replace_store``),
then measures, each in a fresh process on a copy of the store (seconds and peak RSS, VmHWM):

* ``append``: a new study (the model's labels) whose name sorts after every stored one (``merge_into_store``);
* ``append first``: a new study whose name sorts before every stored one;
* ``append MR``: a first MR study into a CT store (the intensities' units turn from HU into image units);
* ``re-run``: a study already in the store (its row replaced);
* ``new labels``: a study whose model has two labels the store lacks;
* ``open_stats``: ``pipeline.volume.stats_zarr.open_stats(store)`` (the whole store, loaded);
* ``volumes_by_label``: ``pipeline.volume.stats_zarr.volumes_by_label(store, "liver")``;
* ``README query``: ``xr.open_zarr(store)["volume_ml"].sel(label="liver").to_series()``.

Values are random (a worst case for compression); each study has voxels in ~60 % of the labels (the
others 0 voxels, NaN intensities), as a CT covering part of the body. Each child runs under an address
space limit (``--limit-gb``): a cell that runs out reads ``MemoryError``.

    python bench/volume_stats_scale.py [--shapes 1000x118 10000x118] [--ops append re-run] [--limit-gb 8] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _child_runs import build_store, child_main
from _child_runs import measure as run_measured

REPO = Path(__file__).resolve().parents[1]
LABELS_JSON = REPO / ".." / "shared" / "data" / "med" / "totalseg_total_labels.json"
OPS = ("append", "append first", "append MR", "re-run", "new labels", "open_stats", "volumes_by_label", "README query")


def label_table(n: int) -> list[tuple[int, str]]:
    """``n`` labels: background and TotalSegmentator's ``total`` names (``label<i>`` beyond them or without the data)."""
    names = {}
    if LABELS_JSON.is_file():
        names = {int(k): v for k, v in json.loads(LABELS_JSON.read_text()).items()}
    names[0] = "background"
    return [(i, names.get(i, f"label{i}")) for i in range(n)]


def study_name(i: int) -> str:
    return f"study{i:06d}"


def random_study(name: str, labels: list[tuple[int, str]], rng: np.random.Generator, *, modality: str = "CT"):
    """A :class:`~pipeline.volume.stats.StudyStats` of random figures over ``labels``."""
    from pipeline.volume.stats import LabelStats, StudyStats

    rows = []
    for label_id, label in labels:
        count = int(rng.integers(1, 10**6)) if rng.random() < 0.6 else 0
        if count:
            lo, hi = sorted(rng.integers(0, 512, 2).tolist())
            q = np.sort(rng.normal(40, 200, 5))
            mean_std = (float(v) for v in rng.normal(40, 100, 2))
            centroid = tuple(float(v) for v in rng.normal(0, 100, 3))
            rows.append(LabelStats(label_id, label, count, count * 0.8 / 1000, *mean_std, *(float(v) for v in q), centroid,
                                   (lo, lo, lo), (hi, hi, hi), int(rng.integers(1, 5)), bool(rng.random() < 0.2)))  # fmt: skip
        else:
            nan = float("nan")
            rows.append(LabelStats(label_id, label, 0, 0.0, nan, nan, nan, nan, nan, nan, nan, (nan, nan, nan), (-1, -1, -1), (-1, -1, -1), 0, False))
    return StudyStats(study=name, source=f"/archive/ct/{name}.nii.gz", modality=modality, model="totalseg-total", shape_zyx=(512, 512, 512),
                      voxel_volume_mm3=0.8, labels=tuple(rows), nodata_voxel_count=0, nodata_volume_ml=0.0)  # fmt: skip


def dataset(n: int, labels: list[tuple[int, str]], rng: np.random.Generator):
    """The Dataset ``merge_into_store`` makes of ``n`` studies of :func:`random_study`'s kind, built column-wise."""
    import xarray as xr

    from pipeline.volume import stats_zarr

    k = len(labels)
    has = rng.random((n, k)) < 0.6
    count = np.where(has, rng.integers(1, 10**6, (n, k)), 0)

    def floats(*shape):
        values = rng.normal(40, 100, (n, k, *shape))
        values[~has] = np.nan
        return values

    lo = np.where(has, rng.integers(0, 256, (n, k)), -1)
    hi = np.where(has, lo + rng.integers(0, 256, (n, k)), -1)
    sl, dims3 = ("study", "label"), ("study", "label", "axis")
    data = {
        "label_id": (sl, np.broadcast_to(np.array([i for i, _ in labels], dtype=np.int64), (n, k)).copy()),
        "segmented": (sl, np.ones((n, k), dtype=bool)),
        "voxel_count": (sl, count.astype(np.int64)),
        "volume_ml": (sl, count * 0.8 / 1000),
        "n_components": (sl, np.where(has, rng.integers(1, 5, (n, k)), 0).astype(np.int64)),
        "touches_border": (sl, has & (rng.random((n, k)) < 0.2)),
        **{f"intensity_{s}": (sl, floats()) for s in ("mean", "std", "min", "max", "median", "p5", "p95")},
        "centroid_ras": (("study", "label", "ras"), floats(3)),
        "bbox_min": (dims3, np.repeat(lo[..., None], 3, axis=2).astype(np.int64)),
        "bbox_max": (dims3, np.repeat(hi[..., None], 3, axis=2).astype(np.int64)),
        "source": ("study", np.array([f"/archive/ct/{study_name(i)}.nii.gz" for i in range(n)])),
        "modality": ("study", np.full(n, "CT")),
        "model": ("study", np.full(n, "totalseg-total")),
        "voxel_volume_mm3": ("study", np.full(n, 0.8)),
        "nodata_voxel_count": ("study", np.zeros(n, dtype=np.int64)),
        "nodata_volume_ml": ("study", np.zeros(n)),
    }
    coords = {"study": np.array([study_name(i) for i in range(n)]), "label": np.array([name for _, name in labels]),
              "ras": np.array(["R", "A", "S"]), "axis": np.array(["z", "y", "x"])}  # fmt: skip
    return stats_zarr._annotated(stats_zarr._normalised(xr.Dataset(data, coords=coords)))


def build(store: Path, n: int, k: int) -> None:
    import importlib.util

    from pipeline import stats_store

    writer = stats_store.replace_store  # segpipe before the study-chunked layout
    if importlib.util.find_spec("pipeline.volume.stats_layout") is not None:
        from pipeline.volume.stats_layout import write_store as writer
    writer(dataset(n, label_table(k), np.random.default_rng(0)), store)


def op(name: str, store: Path, n: int, k: int) -> dict:
    """Run one operation in this process; its seconds."""
    import warnings

    import xarray as xr

    warnings.simplefilter("ignore")
    from pipeline.volume.stats_zarr import merge_into_store, open_stats, volumes_by_label

    rng, labels = np.random.default_rng(1), label_table(k)
    t0 = time.perf_counter()
    if name == "append":
        merge_into_store(random_study(study_name(n), labels, rng), store)
    elif name == "append first":
        merge_into_store(random_study("case000000", labels, rng), store)
    elif name == "append MR":
        merge_into_store(random_study(study_name(n), labels, rng, modality="MR"), store)
    elif name == "re-run":
        merge_into_store(random_study(study_name(n // 2), labels, rng), store)
    elif name == "new labels":
        merge_into_store(random_study(study_name(n), [*labels, (k, "extra_a"), (k + 1, "extra_b")], rng), store)
    elif name == "open_stats":
        open_stats(store)
    elif name == "volumes_by_label":
        volumes_by_label(store, "liver").values
    elif name == "README query":
        xr.open_zarr(store)["volume_ml"].sel(label="liver").to_series()
    return {"s": time.perf_counter() - t0}


def child(args) -> None:
    child_main(args, build, op)


def measure(what: str, store: Path, shape: str, limit_gb: float) -> dict:
    """``what`` in a fresh process, on a copy of ``store`` where it changes the store."""
    return run_measured(__file__, what, store, shape, limit_gb, changes_store=not what.startswith(("open", "volumes", "README")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["1000x118", "10000x118"], help="STUDIESxLABELS (labels include background)")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, metavar="OP", help=f"of: {', '.join(OPS)}")
    parser.add_argument("--limit-gb", type=float, default=8.0, help="address space limit of each measured process (GB)")
    parser.add_argument("--dir", default=None, help="folder for the stores (default: the system's temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"{'studies x labels':>17} {'store MB':>9} {'files':>7} {'dense MB':>9}  {'operation':<17} {'s':>8} {'peak RSS MB':>12}")
    for shape in args.shapes:
        n, k = (int(v) for v in shape.split("x"))
        with tempfile.TemporaryDirectory(prefix="segpipe-volume-stats-", dir=args.dir) as tmp:
            store = Path(tmp) / "stats.zarr"
            built = build_store(__file__, store, shape, 16)
            files = [f for f in store.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files) / 1e6
            dense = n * k * (13 + 9) * 8 / 1e6
            for what in args.ops:
                r = measure(what, store, shape, args.limit_gb)
                s = "-" if r.get("s") is None else f"{r['s']:.2f}"
                rss = "-" if r.get("rss_mb") is None else f"{r['rss_mb']:.0f}"
                note = f"  {r['error']}" if r.get("error") else ""
                print(f"{shape:>17} {size:>9.1f} {len(files):>7} {dense:>9.0f}  {what:<17} {s:>8} {rss:>12}{note}", flush=True)
            print(f"{'':>17} (store built in {built:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
