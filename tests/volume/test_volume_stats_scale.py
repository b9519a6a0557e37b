"""The volume ``stats.zarr`` appended a chunk at a time (pipeline.volume.stats_layout): the same store as the
whole rewrite, a killed append leaves the previous store, concurrent workers lose no row, the units rule holds.

``STUDY_CHUNK`` is made 4 here, so a dozen studies cross several chunk boundaries.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline import stats_store
from pipeline.errors import InputError
from pipeline.volume import stats_layout, stats_zarr
from pipeline.volume.stats import study_statistics
from pipeline.volume.stats_zarr import merge_into_store, open_stats, volumes_by_label

CLASSES = [(0, "background"), (1, "liver"), (2, "spleen"), (3, "kidney"), (5, "aorta")]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(stats_layout, "STUDY_CHUNK", 4)


def study(name: str, *, modality: str = "CT", classes=CLASSES, seed: int | None = None, source: str | None = None, shape=(3, 4, 5)):
    """A study of a tiny random labels volume over ``classes`` (a label may be absent: 0 voxels)."""
    rng = np.random.default_rng(seed if seed is not None else sum(map(ord, name)))
    ids = np.array([c for c, _ in classes])
    labels = rng.choice(ids, size=shape).astype(np.uint8)
    image = rng.normal(40, 100, labels.shape).astype(np.float32)
    return study_statistics(name, labels, image, np.diag([0.8, 0.8, 2.0, 1.0]), list(classes),
                            source=source or f"/data/{name}.nii.gz", modality=modality, model="demo-ct")  # fmt: skip


def whole_rewrite(stats, store: Path) -> None:
    """What merge_into_store did before stats_layout (main at 1159b52): read the whole store, concatenate, rewrite it."""
    with stats_store.lock(store, "exclusive"):
        stats_store.recover(store)
        rows = [stats_zarr._study_dataset(stats)]
        if store.exists():
            existing = stats_store.open_stats(store)
            if stats.study in set(existing.study.values.tolist()):
                existing = existing.drop_sel(study=stats.study)
            if existing.sizes.get("study", 0):
                rows.insert(0, stats_zarr._normalised(existing))
        merged = xr.concat(rows, dim="study", join="outer", fill_value=stats_zarr.FILL, data_vars="all", coords="different", compat="equals")
        merged = stats_zarr._normalised(merged)
        merged = merged.sortby([merged["label_id"].max("study"), merged["label"]]).sortby("study")
        merged["volume_ml"] = merged["volume_ml"].where(merged["segmented"])
        stats_store.replace_store(stats_zarr._annotated(merged), store)


def assert_same_store(store: Path, reference: Path) -> None:
    """The two stores read back identical: values (NaN where NaN), dims, coordinates, attributes, and dtypes;
    and their zarr arrays agree in dtype, fill value, attributes and dimension names (chunks may differ)."""
    with stats_store.quiet():
        got, want = xr.open_zarr(store).load(), xr.open_zarr(reference).load()
        assert got.identical(want)
        assert open_stats(store).identical(open_stats(reference))
        for name, variable in want.variables.items():
            assert got[name].dtype == variable.dtype, name
        mine, theirs = dict(zarr.open_group(store, mode="r").arrays()), dict(zarr.open_group(reference, mode="r").arrays())
        assert set(mine) == set(theirs)
        for name, array in theirs.items():
            other = mine[name]
            assert (other.dtype, other.attrs.asdict(), other.metadata.dimension_names) == (array.dtype, array.attrs.asdict(), array.metadata.dimension_names)
            a, b = np.asarray(other.fill_value), np.asarray(array.fill_value)
            assert a.dtype == b.dtype and (a == b or (a.dtype.kind == "f" and np.isnan(a) and np.isnan(b))), name


@pytest.fixture
def calls(monkeypatch):
    """Counts of the fast appends and whole rewrites merge_into_store made."""
    counts = {"append": 0, "rewrite": 0}
    append, write = stats_layout.append_study, stats_layout.write_store

    def counted_append(*args, **kwargs):
        done = append(*args, **kwargs)
        counts["append"] += bool(done)
        return done

    def counted_write(*args, **kwargs):
        counts["rewrite"] += 1
        return write(*args, **kwargs)

    monkeypatch.setattr(stats_layout, "append_study", counted_append)
    monkeypatch.setattr(stats_layout, "write_store", counted_write)
    return counts


def test_appends_give_the_store_the_whole_rewrite_gives(tmp_path, calls):
    store, reference = tmp_path / "stats.zarr", tmp_path / "reference.zarr"
    fewer = CLASSES[:3]
    sequence = [study(f"s{i:02d}", classes=fewer if i % 3 == 1 else CLASSES) for i in range(11)]  # some lack labels
    sequence += [
        study("s11", modality="MR"),  # the first MR study, appended: HU turns into image units
        study("s05", seed=99),  # a re-run: its row replaced (a rewrite)
        study("a00"),  # sorts first (a rewrite)
        study("s12", classes=[*CLASSES, (9, "lesion")]),  # a new label (a rewrite)
        study("s13", classes=[(0, "background"), (7, "liver"), (2, "spleen")]),  # liver's id higher: the label order changes
        study("s14", source="/data/" + "x" * 40 + ".nii.gz"),  # a longer source path than stored (a rewrite)
        *(study(f"s{i:02d}") for i in range(15, 20)),
    ]
    for stats in sequence:
        merge_into_store(stats, store)
        whole_rewrite(stats, reference)
        assert_same_store(store, reference)
    assert calls["append"] == 10 + 1 + 5 and calls["rewrite"] == 1 + 5  # the first study writes a store; 5 rewrites
    with stats_store.quiet():
        sizes = xr.open_zarr(store)["volume_ml"].encoding["chunks"]
    assert sizes == (4, 6)  # chunked along study
    assert open_stats(store)["intensity_mean"].attrs["units"] == "image units"
    for label in ("liver", "lesion", "aorta"):
        assert volumes_by_label(store, label).identical(volumes_by_label(reference, label))
    assert sorted(os.listdir(tmp_path)) == ["reference.zarr", "stats.zarr"]


def test_the_fast_path_off_gives_the_same_store(tmp_path, monkeypatch):
    monkeypatch.setattr(stats_zarr, "FAST_APPEND", False)
    store, reference = tmp_path / "stats.zarr", tmp_path / "reference.zarr"
    for stats in (study("b"), study("c", modality="MR"), study("a", classes=CLASSES[:2]), study("b", seed=3)):
        merge_into_store(stats, store)
        whole_rewrite(stats, reference)
    assert_same_store(store, reference)


def test_units_hu_while_every_study_is_ct(tmp_path, calls):
    store = tmp_path / "stats.zarr"
    for name in ("s0", "s1", "s2", "s3", "s4"):
        merge_into_store(study(name), store)
        assert open_stats(store)["intensity_p95"].attrs["units"] == "HU"
    merge_into_store(study("s5", modality="MR"), store)  # appended (a fast append)
    assert calls["append"] == 5
    ds = open_stats(store)
    assert {ds[name].attrs["units"] for name in stats_zarr.INTENSITY_VARS} == {"image units"}
    merge_into_store(study("s6"), store)  # CT again: still image units, an MR study is in the store
    assert open_stats(store)["intensity_mean"].attrs["units"] == "image units"
    merge_into_store(study("s5"), store)  # the MR study re-run as CT: every study CT again
    assert open_stats(store)["intensity_mean"].attrs["units"] == "HU"
    assert calls["append"] == 6


def test_a_store_written_before_is_read_appended_and_converted(tmp_path, calls):
    """A store of segpipe before stats_layout (zarr's own chunks, whole arrays) is rewritten into the study-chunked
    layout by its first merge; the next appends are fast."""
    store, reference = tmp_path / "stats.zarr", tmp_path / "reference.zarr"
    for name in ("s0", "s1", "s2"):
        whole_rewrite(study(name), store)
        whole_rewrite(study(name), reference)
    for name in ("s3", "s4", "s5"):
        merge_into_store(study(name), store)
        whole_rewrite(study(name), reference)
    assert_same_store(store, reference)
    assert calls == {"append": 2, "rewrite": 1}
    with stats_store.quiet():
        assert zarr.open_array(store, path="voxel_count", mode="r").chunks == (4, 5)


def test_a_killed_append_leaves_the_previous_store_and_the_next_run_repairs(tmp_path, monkeypatch):
    store, reference = tmp_path / "stats.zarr", tmp_path / "reference.zarr"
    for name in ("s0", "s1", "s2", "s3", "s4"):
        merge_into_store(study(name), store)
        whole_rewrite(study(name), reference)
    before = open_stats(store)

    def interrupted(new, old):
        assert (Path(new) / "study").is_dir()  # the new store is written: every chunk, not yet swapped in
        raise KeyboardInterrupt

    monkeypatch.setattr(stats_store, "swap_in", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_into_store(study("s5"), store)
    monkeypatch.undo()
    monkeypatch.setattr(stats_layout, "STUDY_CHUNK", 4)
    assert open_stats(store).identical(before) and sorted(os.listdir(tmp_path)) == ["reference.zarr", "stats.zarr"]
    merge_into_store(study("s5"), store)
    whole_rewrite(study("s5"), reference)
    assert_same_store(store, reference)


def _killed_append(store: str, name: str) -> None:  # in a child process: killed (no cleanup) after writing, before the swap
    stats_layout.STUDY_CHUNK = 4

    def killed(new, old):
        os._exit(9)

    stats_store.swap_in = killed
    merge_into_store(study(name), Path(store))


def test_a_process_killed_before_the_swap_is_recovered(tmp_path):
    store, reference = tmp_path / "stats.zarr", tmp_path / "reference.zarr"
    for name in ("s0", "s1", "s2", "s3", "s4", "s5"):
        merge_into_store(study(name), store)
        whole_rewrite(study(name), reference)
    before = open_stats(store)
    child = multiprocessing.get_context("spawn").Process(target=_killed_append, args=(str(store), "s6"))
    child.start()
    child.join(120)
    assert child.exitcode == 9
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("stats.zarr.tmp-")]
    assert len(left) == 1  # the new store, written but never swapped in
    assert open_stats(store).identical(before)  # readers still see the previous store
    merge_into_store(study("s6"), store)  # the next run removes the leftover and appends
    whole_rewrite(study("s6"), reference)
    assert_same_store(store, reference)
    assert sorted(os.listdir(tmp_path)) == ["reference.zarr", "stats.zarr"]


def test_a_missing_chunk_file_is_refused_and_the_store_left_alone(tmp_path):
    store = tmp_path / "stats.zarr"
    for name in ("s0", "s1", "s2", "s3", "s4", "s5"):
        merge_into_store(study(name), store)
    (store / "volume_ml" / "c.0.0").unlink()  # chunk 0 along study: a fast append would link the others
    with pytest.raises(InputError, match="damaged"):
        merge_into_store(study("s6"), store)
    assert not (store / "volume_ml" / "c.0.0").exists() and sorted(os.listdir(tmp_path)) == ["stats.zarr"]


def _merge_in_process(store: str, names: list[str]) -> None:
    stats_layout.STUDY_CHUNK = 4
    for name in names:
        merge_into_store(study(name), Path(store))


def test_concurrent_workers_lose_no_row(tmp_path):
    """Threads and processes merging at once (the flow's workers): every study's row is there, as written alone."""
    store, reference = tmp_path / "stats.zarr", tmp_path / "reference.zarr"
    names = [f"s{i:02d}" for i in range(24)]
    order = np.random.default_rng(0).permutation(names).tolist()  # out of order: fast appends and rewrites mixed
    errors: list[BaseException] = []

    def merge(chunk):
        try:
            for name in chunk:
                merge_into_store(study(name), store)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_merge_in_process, args=(str(store), order[i::6])) for i in range(2)]
    threads = [threading.Thread(target=merge, args=(order[i::6],)) for i in range(2, 6)]
    for worker in (*processes, *threads):
        worker.start()
    for worker in threads:
        worker.join()
    for worker in processes:
        worker.join(120)
    assert errors == [] and [p.exitcode for p in processes] == [0, 0]
    assert open_stats(store).study.values.tolist() == names  # no lost row
    for name in names:
        whole_rewrite(study(name), reference)
    assert_same_store(store, reference)


def test_volumes_by_label_reads_only_its_label(tmp_path, monkeypatch):
    store = tmp_path / "stats.zarr"
    for name in ("s0", "s1", "s2"):
        merge_into_store(study(name), store)
    whole = open_stats(store)
    liver = volumes_by_label(store, "liver")
    assert liver.identical(whole["volume_ml"].sel(label="liver").where(whole["segmented"].sel(label="liver")))
    with pytest.raises(InputError, match="no label named 'livr'.*known labels: aorta, background, kidney, liver, spleen"):
        volumes_by_label(store, "livr")
    assert stats_zarr.stored_studies(store) == ["s0", "s1", "s2"]


def test_a_whole_rewrite_runs_in_memory_bounded_by_a_chunk(tmp_path, monkeypatch):
    """A re-run rewrites 3,000 studies x 118 labels (57 MB of arrays) holding a few chunks and the coordinates, not the store."""
    import tracemalloc

    monkeypatch.setattr(stats_layout, "STUDY_CHUNK", 256)
    classes = [(i, f"label{i:03d}") for i in range(118)]
    one = stats_zarr.stats_dataset([study("s00000", classes=classes, shape=(8, 8, 8))])
    n = 3000
    ds = one.isel(study=np.zeros(n, dtype=int)).assign_coords(study=np.array([f"s{i:05d}" for i in range(n)]))
    store = tmp_path / "stats.zarr"
    with stats_store.lock(store, "exclusive"):
        stats_layout.write_store(ds, store)
    dense = sum(v.nbytes for v in ds.data_vars.values())
    del ds, one
    tracemalloc.start()
    try:
        merge_into_store(study("s01500", classes=classes, seed=1, shape=(8, 8, 8)), store)  # a re-run: the whole rewrite
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dense > 50e6 and peak < dense / 2, (peak, dense)  # measured 18 MB of 57 MB; main's rewrite held the store ~3 times
    got = open_stats(store)
    assert got.sizes["study"] == n and got["voxel_count"].sel(study="s01500").values.tolist() != got["voxel_count"].sel(study="s00000").values.tolist()
