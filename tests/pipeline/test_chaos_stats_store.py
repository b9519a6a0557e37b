"""A damaged ``stats.zarr`` is refused with an InputError naming the store and the fix, never read
back as numbers nor added to. Before: a lost chunk read back as NaN (the next append wrote the NaN
for good: an earlier night's areas gone without a word), a truncated chunk or ``zarr.json`` failed
with a raw zstd or JSON error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline.errors import InputError
from pipeline.raster.stats import append_stats
from pipeline.stats_store import fixed_width_strings, open_stats
from pipeline.volume.stats import study_statistics
from pipeline.volume.stats_zarr import merge_into_store


def raster_entry(value: float = 1.0) -> xr.Dataset:
    area = np.full((2, 3), value) + np.arange(6).reshape(2, 3)
    return xr.Dataset(
        {"area_m2": (("region", "class"), area), "nodata_area_m2": ("region", np.zeros(2))},
        coords={
            "region": np.array(["Northfield", "South"], dtype=object),
            "class": np.array(["water", "forest", "urban"], dtype=object),
            "class_id": ("class", np.array([0, 1, 2])),
            "class_color": ("class", np.array(["#1f78b4", "#33a02c", "#e31a1c"], dtype=object)),
        },
    )


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "stats.zarr"
    append_stats(raster_entry(1.0), store, time="2026-01-01T00:00:00", scene="a")
    return store


def _chunk(store: Path, name: str) -> Path:
    """The first chunk file of array ``name``: ``c.<t>...`` (time variables) or under ``c/``."""
    array = store / name
    return next(p for p in sorted(array.rglob("*")) if p.is_file() and p.relative_to(array).parts[0].startswith("c"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "chunk missing": lambda store: _chunk(store, "area_m2").unlink(),
    "chunk of zeros missing": lambda store: _chunk(store, "nodata_area_m2").unlink(),  # all-fill chunks are written too
    "chunk truncated": lambda store: _truncate(_chunk(store, "area_m2")),
    "zarr.json truncated": lambda store: _truncate(store / "zarr.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_refused_naming_it_and_left_as_it_is(tmp_path, damage):
    store = _store(tmp_path)
    DAMAGE[damage](store)
    before = sorted((p.relative_to(store), p.read_bytes()) for p in store.rglob("*") if p.is_file())

    with pytest.raises(InputError) as read:
        open_stats(store)
    with pytest.raises(InputError) as appended:
        append_stats(raster_entry(5.0), store, time="2026-01-02T00:00:00", scene="a")

    for caught in (read, appended):
        assert caught.value.path == str(store)
        assert "statistics store is damaged" in caught.value.problem
        assert "move it away" in caught.value.fix
    assert sorted((p.relative_to(store), p.read_bytes()) for p in store.rglob("*") if p.is_file()) == before


def test_an_intact_store_with_all_nan_variables_opens_and_keeps_no_marker_in_its_attrs(tmp_path):
    store = _store(tmp_path)
    append_stats(raster_entry(2.0), store, time="2026-01-02T00:00:00", scene="b")  # NaN for (time 1, b) and (time 2, a)
    ds = open_stats(store)
    assert ds["area_m2"].sel(time=np.datetime64("2026-01-01T00:00:00"), scene="a").values[0, 0] == 1.0
    assert "segpipe_every_chunk" not in ds.attrs
    (tmp_path / "v").mkdir()
    merge_into_store(_study("s1"), tmp_path / "v" / "stats.zarr")
    assert open_stats(tmp_path / "v" / "stats.zarr").sizes["study"] == 1


def test_a_store_of_an_older_version_without_its_empty_chunks_still_opens(tmp_path):
    old = fixed_width_strings(raster_entry(1.0).assign(nodata_area_m2=("region", np.full(2, np.nan))))
    legacy = tmp_path / "legacy.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old.to_zarr(legacy, mode="w", zarr_format=3, consolidated=True)  # as segpipe wrote it before: the all-NaN chunk left out
    assert not (legacy / "nodata_area_m2" / "c").exists()
    ds = open_stats(legacy)
    assert np.isnan(ds["nodata_area_m2"].values).all()


def _study(name: str):
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    return study_statistics(name, labels, image, np.eye(4), [(0, "background"), (1, "liver")], source=f"/data/{name}.nii.gz", modality="CT", model="demo-ct")


@pytest.mark.slow
def test_stats_updates_in_dask_tasks_on_one_worker_thread_do_not_deadlock(tmp_path):
    """Two studies' statistics merged by Dask tasks on a one-thread worker (``segpipe volume
    --dask-address`` with more studies than worker threads). Before: the first task's read of the
    store, under its lock, went through the cluster and seceded from the worker's thread; the second
    task started in that thread and waited on the lock, the first waited for the thread: both hung."""
    from functools import partial

    from distributed import Client, LocalCluster

    store = tmp_path / "stats.zarr"
    merge_into_store(_study("first"), store)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        futures = [client.submit(partial(merge_into_store, _study(name), store), key=f"merge-{name}") for name in ("a", "b")]
        for future in futures:
            future.result(timeout=120)
    assert sorted(open_stats(store).study.values.tolist()) == ["a", "b", "first"]


@pytest.mark.parametrize("error", [MemoryError, PermissionError])
def test_running_out_of_memory_or_access_while_reading_is_not_called_damage(tmp_path, monkeypatch, error):
    """Only the store's own faults are 'damaged' (with 'restore it from a backup'): a MemoryError or
    a PermissionError while reading it passes through as what it is."""
    store = _store(tmp_path)

    def fails(*args, **kwargs):
        raise error("injected")

    monkeypatch.setattr(xr, "open_zarr", fails)
    with pytest.raises(error, match="injected"):
        open_stats(store)
