"""The statistics stores on disk (pipeline.stats_store): fixed-width strings that xarray can plot and
export, a shared/exclusive lock, snapshots that never see an append half-way, and a swap that leaves
``stats.zarr`` in place at every instant (or is recovered where the system cannot exchange)."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline import stats_store
from pipeline.raster.stats import append_stats
from pipeline.stats_store import fixed_width_strings, lock, open_stats, recover, replace_store, swap_in
from pipeline.volume.stats import study_statistics
from pipeline.volume.stats_zarr import merge_into_store

REPO = Path(__file__).resolve().parents[2]
RASTER_STRINGS = ("region", "class", "scene", "class_color")
VOLUME_STRINGS = ("study", "label", "ras", "axis", "source", "modality", "model")


def raster_entry(value: float = 1.0) -> xr.Dataset:
    """What compute_stats returns (strings as object arrays, as it makes them)."""
    regions = np.array(["Northfield", "South"], dtype=object)
    classes = np.array(["water", "forest", "urban"], dtype=object)
    area = np.full((2, 3), value) + np.arange(6).reshape(2, 3)
    return xr.Dataset(
        {
            "area_m2": (("region", "class"), area, {"units": "m2"}),
            "share": (("region", "class"), area / area.sum(axis=1, keepdims=True), {"units": "1"}),
            "nodata_area_m2": ("region", np.full(2, value), {"units": "m2"}),
        },
        coords={
            "region": regions,
            "class": classes,
            "class_id": ("class", np.array([0, 1, 2])),
            "class_color": ("class", np.array(["#1f78b4", "#33a02c", "#e31a1c"], dtype=object)),
        },
    )


def study(name: str, *, modality: str = "CT"):
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    classes = [(0, "background"), (1, "liver")]
    return study_statistics(name, labels, image, np.eye(4), classes, source=f"/data/{name}.nii.gz", modality=modality, model="demo-ct")


def as_object_strings(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its strings as object arrays: what the previous segpipe versions wrote."""
    out = ds.copy()
    for name, var in ds.variables.items():
        if var.dtype.kind in "UT":
            values = np.array(var.values.tolist(), dtype=object)
            out = out.assign_coords({name: (var.dims, values, var.attrs)}) if name in ds.coords else out.assign({name: (var.dims, values, var.attrs)})
    for var in out.variables.values():
        var.encoding = {}
    return out


def write_legacy(ds: xr.Dataset, store: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        as_object_strings(ds).to_zarr(store, mode="w", zarr_format=3, consolidated=True)


def lazy(store: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(store)


def assert_fixed_width(ds: xr.Dataset, names) -> None:
    for name in names:
        assert ds[name].dtype.kind == "U", f"{name}: {ds[name].dtype}"
        assert ds[name].values.dtype.kind == "U", f"{name}: {ds[name].values.dtype}"


def plots_and_exports(da: xr.DataArray, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        da.plot()  # a heatmap with string axes: refused for StringDType coordinates
        plt.savefig(tmp_path / "plot.png")
    finally:
        plt.close("all")
    assert (tmp_path / "plot.png").stat().st_size > 0


# --- strings ---


def test_fixed_width_strings_converts_every_string_kind_and_nothing_else():
    ds = xr.Dataset(
        {
            "obj": ("x", np.array(["a", "bcd"], dtype=object), {"units": "none"}),
            "vlen": ("x", np.array(["ef", "g"], dtype=np.dtypes.StringDType())),
            "wide": ("x", np.array(["h", "i"], dtype="<U20")),
            "mixed": ("x", np.array(["j", None], dtype=object)),
            "num": ("x", np.array([1.5, 2.5])),
        },
        coords={"x": np.array(["p", "qq"], dtype=np.dtypes.StringDType())},
    )
    ds["vlen"].encoding["dtype"] = np.dtypes.StringDType()
    got = fixed_width_strings(ds)
    assert {name: str(got[name].dtype) for name in ("x", "obj", "vlen", "wide", "mixed", "num")} == {
        "x": "<U2", "obj": "<U3", "vlen": "<U2", "wide": "<U1", "mixed": "object", "num": "float64",
    }
    assert got["obj"].values.tolist() == ["a", "bcd"] and got["obj"].attrs == {"units": "none"}
    assert got.x.values.tolist() == ["p", "qq"] and got["vlen"].encoding == {}
    assert fixed_width_strings(xr.Dataset(coords={"e": np.array([], dtype=object)}))["e"].dtype == np.dtype("<U1")


def test_raster_store_reads_back_fixed_width_and_plots_and_exports(tmp_path):
    store = tmp_path / "stats.zarr"
    append_stats(raster_entry(1), store, time="2024-06-01", scene="demo-scene")
    append_stats(raster_entry(2), store, time="2024-06-02", scene="demo-scene")
    ds = lazy(store)
    assert_fixed_width(ds, RASTER_STRINGS)
    assert ds.region.values.astype(str).tolist() == ["Northfield", "South"]
    assert ds["class_color"].values.tolist() == ["#1f78b4", "#33a02c", "#e31a1c"]
    plots_and_exports(ds["area_m2"].sel(scene="demo-scene").isel(time=0), tmp_path)
    ds.load().to_netcdf(tmp_path / "export.nc")
    back = xr.open_dataset(tmp_path / "export.nc")
    assert back["area_m2"].sel(region="South", **{"class": "urban"}).values.tolist() == [[6.0], [7.0]]


def test_volume_store_reads_back_fixed_width_and_plots_and_exports(tmp_path):
    store = tmp_path / "stats.zarr"
    merge_into_store(study("case01"), store)
    merge_into_store(study("case02", modality="MR"), store)
    ds = lazy(store)
    assert_fixed_width(ds, VOLUME_STRINGS)
    assert ds.modality.values.tolist() == ["CT", "MR"] and ds.axis.values.tolist() == ["z", "y", "x"]
    plots_and_exports(ds["volume_ml"], tmp_path)
    ds.load().to_netcdf(tmp_path / "export.nc")
    assert xr.open_dataset(tmp_path / "export.nc")["voxel_count"].sel(study="case02", label="liver").item() == 6


def test_raster_store_written_by_older_versions_is_read_and_rewritten(tmp_path):
    store = tmp_path / "stats.zarr"
    append_stats(raster_entry(1), store, time="2024-06-01", scene="demo-scene")
    write_legacy(open_stats(store), store)
    assert lazy(store).region.dtype.kind == "T"  # what the old stores read back as
    snapshot = open_stats(store)
    assert_fixed_width(snapshot, RASTER_STRINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot.to_zarr(tmp_path / "copy.zarr", zarr_format=3)  # the snapshot's own encodings write <U too
    assert_fixed_width(lazy(tmp_path / "copy.zarr"), RASTER_STRINGS)
    append_stats(raster_entry(5), store, time="2024-06-02", scene="other")
    ds = lazy(store)
    assert_fixed_width(ds, RASTER_STRINGS)
    assert ds.scene.values.tolist() == ["demo-scene", "other"]
    np.testing.assert_array_equal(ds["area_m2"].sel(region="Northfield", **{"class": "water"}).values, [[1.0, np.nan], [np.nan, 5.0]])
    assert ds["area_m2"].attrs == {"units": "m2"} and ds["class_id"].values.tolist() == [0, 1, 2]


def test_volume_store_written_by_older_versions_is_read_and_rewritten(tmp_path):
    store = tmp_path / "stats.zarr"
    merge_into_store(study("case01"), store)
    before = open_stats(store)
    write_legacy(before, store)
    merge_into_store(study("case02"), store)
    ds = open_stats(store)
    assert_fixed_width(ds, VOLUME_STRINGS)
    assert ds.study.values.tolist() == ["case01", "case02"]
    assert ds.sel(study="case01").drop_vars("study").identical(before.sel(study="case01").drop_vars("study"))
    assert ds["intensity_mean"].attrs["units"] == "HU"


# --- the lock ---


def test_shared_locks_coexist_and_the_exclusive_one_waits_for_them(tmp_path):
    store = tmp_path / "stats.zarr"
    both_in = threading.Barrier(2, timeout=10)
    events: list[str] = []

    def reader(name):
        with lock(store, "shared"):
            both_in.wait()  # both readers inside at once, or this times out
            time.sleep(0.2)
            events.append(f"{name} out")

    readers = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    for t in readers:
        t.start()
    time.sleep(0.05)
    with lock(store, "exclusive"):
        events.append("writer in")
    for t in readers:
        t.join()
    assert events[-1] == "writer in" and sorted(events[:2]) == ["r1 out", "r2 out"]
    assert os.listdir(tmp_path) == []  # no lock file


def test_lock_nests_on_one_thread_and_refuses_an_upgrade(tmp_path):
    store = tmp_path / "stats.zarr"
    append_stats(raster_entry(), store, time="2024-06-01", scene="a")
    with lock(store, "exclusive"):
        assert open_stats(store).sizes["time"] == 1  # a shared request inside: no deadlock
        with lock(store, "exclusive"):
            pass
    with lock(store, "shared"), pytest.raises(RuntimeError, match="holds the shared"):
        with lock(store, "exclusive"):
            pass
    with lock(store, "exclusive"):  # the failed upgrade released nothing it did not take
        pass


def test_open_stats_of_a_missing_store_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_stats(tmp_path / "stats.zarr")
    with pytest.raises(FileNotFoundError):
        open_stats(tmp_path / "nowhere" / "stats.zarr")


# --- snapshots while another process appends ---

APPENDER = """
import sys, numpy as np, xarray as xr
from pipeline.raster.stats import append_stats
store, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    ds = xr.Dataset({"area_m2": (("region", "class"), np.full((2, 3), float(i)))},
                    coords={"region": ["a", "b"], "class": ["x", "y", "z"], "class_id": ("class", [0, 1, 2]), "class_color": ("class", ["#000000"] * 3)})
    append_stats(ds, store, time=np.datetime64("2024-01-01") + np.timedelta64(i, "D"), scene="s")
"""


def test_snapshots_are_whole_while_another_process_appends(tmp_path):
    """The reviewer's reader loop (xr.open_zarr(...).load()) failed 3 times in 1440 while runs
    appended; open_stats reads under the shared lock and never sees metadata and chunks of two stores."""
    store = tmp_path / "stats.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", APPENDER, str(store), "1"], check=True, env=env)
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(store), "25"], env=env)
    failures, sizes = [], set()
    try:
        while appender.poll() is None:
            try:
                ds = open_stats(store)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            n = ds.sizes["time"]
            sizes.add(n)
            # every time step is whole: day i holds the value i everywhere
            days = (ds.time.values - np.datetime64("2024-01-01")) // np.timedelta64(1, "D")
            assert ds["area_m2"].shape == (n, 1, 2, 3)
            assert np.array_equal(ds["area_m2"].values, np.broadcast_to(days.astype(float)[:, None, None, None], (n, 1, 2, 3)))
    finally:
        appender.wait(timeout=120)
    assert appender.returncode == 0 and failures == []
    assert len(sizes) >= 3  # the reader did see the store grow
    assert open_stats(store).sizes["time"] == 25


def test_volume_snapshots_are_whole_while_threads_merge(tmp_path):
    store = tmp_path / "stats.zarr"
    merge_into_store(study("s00"), store)
    stop, failures, seen = threading.Event(), [], set()

    def read_loop():
        while not stop.is_set():
            try:
                ds = open_stats(store)
                assert ds["volume_ml"].shape == (ds.sizes["study"], 2)
                seen.add(ds.sizes["study"])
            except Exception as exc:  # noqa: BLE001 - asserted below
                failures.append(exc)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(1, 10):
            merge_into_store(study(f"s{i:02d}"), store)
    finally:
        stop.set()
        reader.join()
    assert failures == [] and len(seen) >= 2
    assert open_stats(store).study.values.tolist() == [f"s{i:02d}" for i in range(10)]


# --- the swap and its recovery ---


def _complete_store(path: Path, value: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.Dataset({"v": (("study", "label"), [[value]])}, coords={"study": ["s"], "label": ["l"]})  # shaped like a volume store
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)


def _value(store: Path) -> float:
    return float(open_stats(store)["v"].item())


@pytest.mark.skipif(stats_store._renameat2() is None, reason="no renameat2 on this system")
def test_swap_exchanges_in_one_step(tmp_path, monkeypatch):
    store, new = tmp_path / "stats.zarr", tmp_path / "stats.zarr.tmp-00000000"
    _complete_store(store, 1.0)
    _complete_store(new, 2.0)

    def no_rename(*args):
        raise AssertionError("the exchange path renames nothing")

    monkeypatch.setattr(stats_store.os, "rename", no_rename)
    swap_in(new, store)
    assert _value(store) == 2.0 and os.listdir(tmp_path) == ["stats.zarr"]


@pytest.mark.parametrize("how", ["no renameat2", "EINVAL", "ENOSYS"])
def test_swap_falls_back_to_two_renames(tmp_path, monkeypatch, how):
    if how == "no renameat2":
        monkeypatch.setattr(stats_store, "_renameat2", lambda: None)
    else:
        code = getattr(errno, how)

        def unsupported(*args):
            ctypes.set_errno(code)
            return -1

        monkeypatch.setattr(stats_store, "_renameat2", lambda: unsupported)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(stats_store.os, "rename", lambda a, b: (renames.append(Path(b).name), real_rename(a, b)))
    store, new = tmp_path / "stats.zarr", tmp_path / "stats.zarr.tmp-00000000"
    _complete_store(store, 1.0)
    _complete_store(new, 2.0)
    swap_in(new, store)
    assert renames[0].startswith("stats.zarr.old-") and renames[1] == "stats.zarr"
    assert _value(store) == 2.0 and os.listdir(tmp_path) == ["stats.zarr"]


def test_swap_reports_other_exchange_errors(tmp_path, monkeypatch):
    def denied(*args):
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(stats_store, "_renameat2", lambda: denied)
    store, new = tmp_path / "stats.zarr", tmp_path / "stats.zarr.tmp-00000000"
    _complete_store(store, 1.0)
    _complete_store(new, 2.0)
    with pytest.raises(PermissionError):
        swap_in(new, store)
    assert _value(store) == 1.0


def test_a_failed_write_leaves_the_store_and_no_temporary(tmp_path, monkeypatch):
    store = tmp_path / "stats.zarr"
    _complete_store(store, 1.0)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stats_store, "swap_in", full_disk)
    with pytest.raises(OSError, match="No space"):
        replace_store(xr.Dataset({"v": ("x", [2.0])}), store)
    assert _value(store) == 1.0 and os.listdir(tmp_path) == ["stats.zarr"]


KILLED_APPEND = """
import os, signal, sys
import numpy as np, xarray as xr
from pipeline import stats_store
from pipeline.raster.stats import append_stats
store, how = sys.argv[1], sys.argv[2]
if how == "after the exchange":
    exchange = stats_store._exchange
    def exchange_and_die(a, b):
        assert exchange(a, b)
        os.kill(os.getpid(), signal.SIGKILL)
    stats_store._exchange = exchange_and_die
else:  # the fallback, killed between its two renames
    stats_store._renameat2 = lambda: None
    rename = os.rename
    def rename_and_die(a, b):
        rename(a, b)
        os.kill(os.getpid(), signal.SIGKILL)
    stats_store.os.rename = rename_and_die
coords = {"region": ["r"], "class": ["c"], "class_id": ("class", [0]), "class_color": ("class", ["#000000"])}
ds = xr.Dataset({"area_m2": (("region", "class"), [[2.0]])}, coords=coords)
append_stats(ds, store, time="2024-06-02", scene="a")
"""


@pytest.mark.parametrize("how", ["after the exchange", "between the fallback's renames"])
def test_a_run_killed_inside_the_swap(tmp_path, how):
    """SIGKILL right after the exchange: ``stats.zarr`` is already the new store (the old one waits
    under a temporary name); between the fallback's two renames: no store until the next append
    puts the old one back. Either way the next append leaves only ``stats.zarr``."""
    if how == "after the exchange" and stats_store._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    store = tmp_path / "stats.zarr"
    one = raster_entry().isel(region=[0], **{"class": [0]})
    one = one.assign_coords(region=["r"], **{"class": ["c"]}, class_color=("class", ["#000000"]))
    append_stats(one, store, time="2024-06-01", scene="a")
    killed = subprocess.run([sys.executable, "-c", KILLED_APPEND, str(store), how], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    if how == "after the exchange":
        assert left[0] == "stats.zarr" and left[1].startswith("stats.zarr.tmp-")
        assert [str(t)[:10] for t in open_stats(store).time.values] == ["2024-06-01", "2024-06-02"]
        expected = ["2024-06-01", "2024-06-02", "2024-06-03"]
    else:
        assert len(left) == 2 and left[0].startswith("stats.zarr.old-") and left[1].startswith("stats.zarr.tmp-")
        expected = ["2024-06-01", "2024-06-03"]
    append_stats(one * 3, store, time="2024-06-03", scene="a")
    assert [str(t)[:10] for t in open_stats(store).time.values] == expected
    assert sorted(os.listdir(tmp_path)) == ["stats.zarr"]


def test_recover_handles_the_names_older_volume_stores_left(tmp_path):
    store = tmp_path / "stats.zarr"
    _complete_store(tmp_path / ".stats.zarr.old", 1.0)  # killed between the old code's renames
    _complete_store(tmp_path / ".stats.zarr.tmp-1234", 2.0)
    (tmp_path / ".stats.zarr.lock").touch()
    recover(store)
    assert os.listdir(tmp_path) == ["stats.zarr"] and _value(store) == 1.0
    _complete_store(tmp_path / ".stats.zarr.old", 3.0)  # killed after the new store took its place
    recover(store)
    assert os.listdir(tmp_path) == ["stats.zarr"] and _value(store) == 1.0


def test_recover_leaves_a_users_files_beside_the_store_alone(tmp_path):
    """A user's backup ``stats.zarr.old-jan`` was deleted and a folder ``stats.zarr.old-backup`` put in
    place of a missing store; ``stats.zarr.tmp-mine`` was deleted. Only segpipe's own temporaries
    (``<name>.tmp-<8 hex>``, ``<name>.old-<8 hex>`` holding statistics) are touched."""
    store = tmp_path / "stats.zarr"
    _complete_store(tmp_path / "stats.zarr.old-jan", 1.0)  # the user's backup copy
    (tmp_path / "stats.zarr.old-backup").mkdir()
    (tmp_path / "stats.zarr.old-backup" / "important.txt").write_text("mine")
    (tmp_path / "stats.zarr.tmp-mine").mkdir()
    (tmp_path / "stats.zarr.old-0badcafe").mkdir()  # our name, but no statistics inside: not put back
    (tmp_path / "stats.zarr.old-0badcafe" / "notes.txt").write_text("not a store")
    recover(store)
    assert not store.exists()
    assert sorted(os.listdir(tmp_path)) == ["stats.zarr.old-0badcafe", "stats.zarr.old-backup", "stats.zarr.old-jan", "stats.zarr.tmp-mine"]
    merge_into_store(study("case01"), store)
    assert sorted(os.listdir(tmp_path)) == ["stats.zarr", "stats.zarr.old-0badcafe", "stats.zarr.old-backup", "stats.zarr.old-jan", "stats.zarr.tmp-mine"]
    assert open_stats(store).study.values.tolist() == ["case01"] and _value(tmp_path / "stats.zarr.old-jan") == 1.0


def test_volume_merge_recovers_a_swap_killed_between_the_renames(tmp_path):
    store = tmp_path / "stats.zarr"
    merge_into_store(study("case01"), store)
    store.rename(tmp_path / "stats.zarr.old-0123abcd")
    merge_into_store(study("case02"), store)
    assert open_stats(store).study.values.tolist() == ["case01", "case02"]
    assert sorted(os.listdir(tmp_path)) == ["stats.zarr"]


def test_store_writes_and_reads_without_warnings(tmp_path):
    """zarr warns that fixed_length_utf32 has no v3 specification; segpipe's own reads and writes stay quiet."""
    store = tmp_path / "stats.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        append_stats(raster_entry(), store, time="2024-06-01", scene="a")
        append_stats(raster_entry(), store, time="2024-06-02", scene="a")
        open_stats(store)

