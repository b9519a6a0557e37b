"""One scene's append to ``stats.zarr`` writes one night (``pipeline.raster.stats._append_fast``): the store
it gives equals the whole rewrite's, its unchanged chunk files are hard links, the old store stays
byte-identical until the swap, and a damaged store is refused as the whole read refuses it."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import pipeline.raster.stats as raster_stats
import pipeline.stats_store as stats_store
from pipeline.errors import InputError
from pipeline.raster.provenance import Provenance
from pipeline.raster.stats import append_stats
from pipeline.stats_store import EVERY_CHUNK_ATTR, open_stats

FAST = "fast append of"


def entry(value: float = 1.0, regions=("Northfield", "South")) -> xr.Dataset:
    k = len(regions)
    area = np.full((k, 3), value) + np.arange(3 * k).reshape(k, 3)
    ds = xr.Dataset(
        {
            "area_m2": (("region", "class"), area, {"units": "m2"}),
            "share": (("region", "class"), area / area.sum(axis=1, keepdims=True)),
            "nodata_area_m2": ("region", np.full(k, value), {"units": "m2"}),
        },
        coords={
            "region": np.array(list(regions), dtype=object),
            "class": np.array(["water", "forest", "urban"], dtype=object),
            "class_id": ("class", np.array([0, 1, 2])),
            "class_color": ("class", np.array(["#1f78b4", "#33a02c", "#e31a1c"], dtype=object)),
        },
    )
    ds.attrs["coverage"] = "exact"
    return ds


def prov(source: str = "/data/a.tif") -> Provenance:
    return Provenance(source=source, model="unet", checkpoint_sha256="c" * 64, regions="/data/r.gpkg", segpipe_version="0.1", inputs_sha256="i" * 64)


# (entry, time, scene, source, force, fast path expected, error expected)
STEPS = [
    (entry(1.0), "2026-01-01T02:00:00", "a", "/data/a1.tif", False, False, False),  # new store
    (entry(2.0), "2026-01-01T02:00:00", "b", "/data/b1.tif", False, False, False),  # new scene
    (entry(3.0), "2026-01-02T02:00:07", "a", "/data/a2.tif", False, True, False),  # a new night
    (entry(4.0), "2026-01-02T02:00:07", "b", "/data/b2.tif", False, True, False),  # a scene of an existing night
    (entry(5.0), "2026-01-03T02:01:00", "b", "/data/b3.tif", False, True, False),
    (entry(6.0), "2026-01-02T02:00:07", "a", "/data/A2.tif", True, True, False),  # replaced from another source, force
    (entry(7.0), "2026-01-02T02:00:07", "a", "/data/X2.tif", False, True, True),  # another source without force: refused
    (entry(8.0, ("South",)), "2026-01-03T02:01:00", "a", "/data/a3.tif", False, True, False),  # fewer regions
    (entry(9.0), "2026-01-03T02:01:00", "a", "/data/a3.tif", False, True, False),  # same source again
    (entry(10.0), "2026-01-04T02:00:00", "c", "/data/c4.tif", False, False, False),  # a new scene
    (entry(11.0, ("Northfield", "South", "East")), "2026-01-04T02:00:00", "a", "/data/a4.tif", False, False, False),  # a new region
    (entry(12.0), "2025-12-31T02:00:00", "a", "/data/a0.tif", False, False, False),  # a backfilled earlier night
    (entry(13.0), "2026-01-05T02:00:00", "a", "/data/a5.tif", False, True, False),  # fast again after the rewrites
    (entry(14.0), "2026-01-05T02:00:00", "b", "/data/a-much-longer-source-path-b5.tif", False, False, False),  # wider strings
    (entry(15.0), "2026-01-06T02:00:00.5", "b", "/data/b6.tif", False, False, False),  # a time in finer units
]


def _loaded(store: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with xr.open_zarr(store, consolidated=None, chunks=None) as ds:
            loaded = ds.load()
    loaded.attrs.pop(EVERY_CHUNK_ATTR, None)
    return loaded


def _append(monkeypatch, fast: bool, step, store: Path) -> None:
    ds, time, scene, source, force, _, _ = step
    monkeypatch.setattr(raster_stats, "FAST_APPEND", fast)
    append_stats(ds, store, time=time, scene=scene, provenance=prov(source), force=force)


def _hashes(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}


def _fast_taken(caplog) -> bool:
    return any(FAST in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("steps_per_chunk", [1, 2, 32])
def test_fast_appends_give_the_whole_rewrites_store(tmp_path, monkeypatch, caplog, steps_per_chunk):
    monkeypatch.setattr(stats_store, "TIME_CHUNK", steps_per_chunk)
    fast, slow = tmp_path / "fast" / "stats.zarr", tmp_path / "slow" / "stats.zarr"
    for i, step in enumerate(STEPS):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pipeline.raster.stats"):
            for store, on in ((slow, False), (fast, True)):
                if step[6]:
                    with pytest.raises(InputError, match="pass --force"):
                        _append(monkeypatch, on, step, store)
                else:
                    _append(monkeypatch, on, step, store)
        assert _fast_taken(caplog) == (step[5] and not step[6]), f"step {i}"
        xr.testing.assert_identical(_loaded(fast), _loaded(slow))
        xr.testing.assert_identical(open_stats(fast), open_stats(slow))  # damage checks pass
    final = open_stats(fast)
    assert final.sizes == {"time": 7, "scene": 3, "region": 3, "class": 3}
    a3 = final["area_m2"].sel(time=np.datetime64("2026-01-03T02:01:00"), scene="a")
    assert a3.sel(region="South").values.tolist() == [12.0, 13.0, 14.0] and np.isnan(a3.sel(region="East").values).all()
    assert str(final["source"].sel(time=np.datetime64("2026-01-02T02:00:07"), scene="a").values) == "/data/A2.tif"


def _two_nights(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(stats_store, "TIME_CHUNK", 1)  # one night per chunk: c.0..., c.1...
    store = tmp_path / "stats.zarr"
    for step in STEPS[:3]:
        _append(monkeypatch, True, step, store)
    return store


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def test_unchanged_chunks_are_linked_and_the_changed_night_written(tmp_path, monkeypatch, caplog):
    """Only the chunk of the entry's scene at its night is written: the other scenes' chunks of that night
    stay links (with every scene in one chunk, the Nth scene's append rewrote all N scenes' values)."""
    store = _two_nights(tmp_path, monkeypatch)
    area = store / "area_m2"
    night0, night1, night1_a = area / "c.0.1.0.0", area / "c.1.1.0.0", area / "c.1.0.0.0"
    before0, before1, before1_a, class_id = _inode(night0), _inode(night1), _inode(night1_a), _inode(store / "class_id" / "c" / "0")
    source1 = _inode(store / "source" / "c.1.0")
    with caplog.at_level(logging.DEBUG, logger="pipeline.raster.stats"):
        _append(monkeypatch, True, STEPS[3], store)  # scene b at night 1 rewritten
    assert _fast_taken(caplog)
    assert _inode(night0) == before0 and os.stat(night0).st_nlink == 1  # the old store's link is gone with it
    assert _inode(night1_a) == before1_a  # scene a's chunk of the same night: linked, not read nor written
    assert _inode(night1) != before1
    assert _inode(store / "source" / "c.1.0") != source1  # the per-entry strings: all scenes in one (small) chunk
    assert _inode(store / "class_id" / "c" / "0") != class_id  # copied, not linked
    caplog.clear()
    before0 = _inode(night0)
    with caplog.at_level(logging.DEBUG, logger="pipeline.raster.stats"):
        _append(monkeypatch, True, STEPS[9], store)  # a new scene at a new night: the whole rewrite
    assert not _fast_taken(caplog)
    assert _inode(night0) == before0  # ... which links the chunks it would write with the same bytes (stats_store.Unchanged)
    assert (area / "c.2.2.0.0").is_file() and os.stat(area / "c.2.2.0.0").st_nlink == 1  # the new scene's, written


def test_old_chunking_is_converted_by_one_whole_rewrite(tmp_path, monkeypatch, caplog):
    store = _two_nights(tmp_path, monkeypatch)
    ds = open_stats(store)
    for variable in ds.variables.values():
        variable.encoding = {}  # xarray's own chunks: the whole array in one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.assign_attrs({EVERY_CHUNK_ATTR: True}).to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=True, write_empty_chunks=True)
    old = tmp_path / "old.zarr"
    caplog.set_level(logging.DEBUG, logger="pipeline.raster.stats")
    _append(monkeypatch, True, STEPS[3], old)
    assert not _fast_taken(caplog) and "fast append not possible" in caplog.text
    caplog.clear()
    _append(monkeypatch, True, STEPS[4], old)
    assert _fast_taken(caplog)


@pytest.mark.parametrize("step", [3, 4], ids=["existing night", "new night"])
def test_a_failed_swap_leaves_the_old_store_byte_identical(tmp_path, monkeypatch, step):
    store = _two_nights(tmp_path, monkeypatch)
    hashes, values = _hashes(store), open_stats(store)

    def fail(new, target):
        assert (Path(new) / "zarr.json").is_file()  # the new store was built
        raise OSError("swap refused (test)")

    monkeypatch.setattr(stats_store, "swap_in", fail)
    with pytest.raises(OSError, match="swap refused"):
        _append(monkeypatch, True, STEPS[step], store)
    assert _hashes(store) == hashes
    assert [p.name for p in store.parent.iterdir()] == ["stats.zarr"]  # no temporary left
    assert all(os.stat(p).st_nlink == 1 for p in store.rglob("*") if p.is_file())
    xr.testing.assert_identical(open_stats(store), values)


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: (s / "area_m2" / "c.0.0.0.0").unlink(),  # another night's chunk
        lambda s: (s / "source" / "c.1.0").unlink(),  # the night rewritten
        lambda s: (s / "class_id" / "c" / "0").unlink(),  # an array without time
        lambda s: _truncate(s / "area_m2" / "c.0.0.0.0"),  # another night's chunk, never read by the append
        lambda s: (s / "area_m2" / "c.0.0.0.0").write_bytes(b""),
    ],
    ids=["other night", "this night", "no time dimension", "other night truncated", "other night emptied"],
)
def test_a_store_with_a_missing_or_truncated_chunk_is_refused_on_the_fast_path(tmp_path, monkeypatch, damage):
    store = _two_nights(tmp_path, monkeypatch)
    damage(store)
    hashes = _hashes(store)
    for step in (3, 4):  # existing night, new night
        with pytest.raises(InputError, match="statistics store is damaged"):
            _append(monkeypatch, True, STEPS[step], store)
        assert _hashes(store) == hashes
        assert [p.name for p in store.parent.iterdir()] == ["stats.zarr"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def test_a_truncated_chunk_of_the_night_rewritten_is_refused(tmp_path, monkeypatch):
    store = _two_nights(tmp_path, monkeypatch)
    chunk = store / "area_m2" / "c.1.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(InputError, match="damaged"):
        _append(monkeypatch, True, STEPS[3], store)
    with pytest.raises(InputError, match="damaged"):
        open_stats(store)


def test_a_file_system_without_hard_links_gets_the_whole_rewrite(tmp_path, monkeypatch, caplog):
    """Some network and FUSE mounts refuse os.link (EPERM, ENOTSUP...): the append is still made, by
    the whole rewrite, with the same store; a full disk (ENOSPC) is not mistaken for that and fails."""
    import errno

    store = _two_nights(tmp_path, monkeypatch)
    (tmp_path / "ref").mkdir()
    reference = _two_nights(tmp_path / "ref", monkeypatch)
    _append(monkeypatch, False, STEPS[3], reference)

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(stats_store, "_hard_link", no_links)  # zarr itself keeps its links: only the copy is refused
    with caplog.at_level(logging.DEBUG, logger="pipeline.raster.stats"):
        _append(monkeypatch, True, STEPS[3], store)
    assert not _fast_taken(caplog) and "no hard links here" in caplog.text
    xr.testing.assert_identical(_loaded(store), _loaded(reference))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the fast path's half-built copy is gone

    def disk_full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(stats_store, "_hard_link", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _append(monkeypatch, True, STEPS[4], store)
