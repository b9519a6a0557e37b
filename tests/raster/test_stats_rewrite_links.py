"""The whole rewrite of ``stats.zarr`` (a new scene, region, class, an earlier night, wider strings) links the
old store's chunk files it would write with the same bytes (``pipeline.stats_store.Unchanged``): the store it
gives is byte for byte the store written chunk by chunk, file for file, through every kind of rewrite."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import pipeline.raster.stats as raster_stats
import pipeline.stats_store as stats_store
from pipeline.errors import InputError
from pipeline.raster.provenance import Provenance
from pipeline.raster.stats import append_stats
from pipeline.stats_store import open_stats

COLORS = {"water": "#1f78b4", "forest": "#33a02c", "urban": "#e31a1c", "bare": "#ffff99", "snow": "#ffffff"}
IDS = {"water": 0, "forest": 1, "urban": 2, "bare": 3, "snow": 4}


def entry(value: float, regions=("Northfield", "South"), classes=("water", "forest", "urban"), colors=None) -> xr.Dataset:
    k, c = len(regions), len(classes)
    area = np.full((k, c), value) + np.arange(c * k).reshape(k, c)
    colors = {**COLORS, **(colors or {})}
    return xr.Dataset(
        {
            "area_m2": (("region", "class"), area, {"units": "m2"}),
            "share": (("region", "class"), area / area.sum(axis=1, keepdims=True)),
            "nodata_area_m2": ("region", np.full(k, value), {"units": "m2"}),
        },
        coords={
            "region": np.array(list(regions), dtype=object),
            "class": np.array(list(classes), dtype=object),
            "class_id": ("class", np.array([IDS[n] for n in classes])),
            "class_color": ("class", np.array([colors[n] for n in classes], dtype=object)),
        },
        attrs={"coverage": "exact"},
    )


def prov(source: str) -> Provenance:
    return Provenance(source=source, model="unet", checkpoint_sha256="c" * 64, regions="/data/r.gpkg", segpipe_version="0.1", inputs_sha256="i" * 64)


# (entry, time, scene, source, whole rewrite expected)
STEPS = [
    (entry(1.0), "2026-01-01T02:00:00", "m", "/data/m1.tif", True),  # new store
    (entry(2.0), "2026-01-01T02:00:00", "p", "/data/p1.tif", True),  # new scene at the night
    (entry(3.0), "2026-01-02T02:00:00", "m", "/data/m2.tif", False),  # fast: a new night
    (entry(4.0), "2026-01-03T02:00:00", "m", "/data/m3.tif", False),
    (entry(5.0), "2026-01-03T02:00:00", "b", "/data/b3.tif", True),  # new scene sorting first, at the last night
    (entry(6.0), "2026-01-04T02:00:00", "z", "/data/z4.tif", True),  # new scene at a new night
    (entry(7.0, ("Northfield", "South", "East")), "2026-01-04T02:00:00", "m", "/data/m4.tif", True),  # new region
    (entry(8.0, classes=("water", "snow", "forest", "bare", "urban")), "2026-01-04T02:00:00", "p", "/data/p4.tif", True),  # 2 new classes
    (entry(9.0), "2025-12-31T02:00:00", "m", "/data/m0.tif", True),  # a backfilled earlier night
    (entry(10.0), "2026-01-02T02:00:00", "b", "/data/a-much-longer-source-path-b2.tif", True),  # wider strings
    (entry(11.0, colors={"urban": "#000000"}), "2026-01-05T02:00:00", "m", "/data/m5.tif", True),  # a new class colour
    (entry(12.0, ("South",)), "2026-01-05T02:00:00", "q", "/data/q5.tif", True),  # new scene, fewer regions
    (entry(13.0), "2026-01-06T02:00:00.5", "p", "/data/p6.tif", True),  # a time in finer units
]


def _hashes(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}


def _append(monkeypatch, link: bool, step, store: Path) -> None:
    ds, time, scene, source, _ = step
    monkeypatch.setattr(stats_store, "LINK_UNCHANGED", link)
    append_stats(ds, store, time=time, scene=scene, provenance=prov(source))


@pytest.mark.parametrize("steps_per_chunk", [1, pytest.param(2, marks=pytest.mark.slow), 32])
def test_linked_rewrites_give_the_written_stores_bytes(tmp_path, monkeypatch, steps_per_chunk):
    monkeypatch.setattr(stats_store, "TIME_CHUNK", steps_per_chunk)
    linked, written = tmp_path / "linked" / "stats.zarr", tmp_path / "written" / "stats.zarr"
    links = []
    real = stats_store._link_or_copy
    monkeypatch.setattr(stats_store, "_link_or_copy", lambda src, dst: (links.append(f"{dst.parent.name}/{dst.name}"), real(src, dst)))
    for i, step in enumerate(STEPS):
        links.clear()
        _append(monkeypatch, False, step, written)
        assert not links, f"step {i}: linked with LINK_UNCHANGED off"
        _append(monkeypatch, True, step, linked)
        assert _hashes(linked) == _hashes(written), f"step {i}"
        if i in (4, 11) or (i == 5 and steps_per_chunk == 1):  # a new scene: every other scene's chunks linked
            assert len(links) > 0, f"step {i}: nothing linked"
        if i in (6, 8):  # a new region, an earlier night: every chunk changes
            assert not links, f"step {i}: linked {links[:3]}"
        if i == 7:  # new classes: the variables per class change, those per region stay
            assert links and not [x for x in links if x.split("/")[0] in ("area_m2", "share")], f"step {i}: linked {links[:3]}"
    xr.testing.assert_identical(open_stats(linked), open_stats(written))
    final = open_stats(linked)
    assert final.sizes == {"time": 7, "scene": 5, "region": 3, "class": 5}


def test_a_new_scene_writes_its_own_chunks_and_links_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(stats_store, "TIME_CHUNK", 2)
    store = tmp_path / "stats.zarr"
    for step in STEPS[:4]:  # scenes m, p; nights 1, 2, 3: chunks 0 (nights 1, 2) and 1 (night 3) along time
        _append(monkeypatch, True, step, store)
    inodes = {p.name: os.stat(p).st_ino for p in (store / "area_m2").glob("c.*")}
    _append(monkeypatch, True, STEPS[4], store)  # scene b (sorts first: m and p move to 1 and 2) at night 3
    after = {p.name: os.stat(p).st_ino for p in (store / "area_m2").glob("c.*")}
    assert sorted(after) == ["c.0.0.0.0", "c.0.1.0.0", "c.0.2.0.0", "c.1.0.0.0", "c.1.1.0.0", "c.1.2.0.0"]
    for t in (0, 1):
        assert after[f"c.{t}.1.0.0"] == inodes[f"c.{t}.0.0.0"] and after[f"c.{t}.2.0.0"] == inodes[f"c.{t}.1.0.0"]
    assert after["c.0.0.0.0"] not in inodes.values() and after["c.1.0.0.0"] not in inodes.values()
    ds = open_stats(store)
    assert ds["area_m2"].sel(scene="b", time=np.datetime64("2026-01-03T02:00:00")).values[0].tolist() == [5.0, 6.0, 7.0]
    assert ds["area_m2"].sel(scene="m", time=np.datetime64("2026-01-02T02:00:00")).values[1].tolist() == [6.0, 7.0, 8.0]


def test_without_hard_links_the_old_chunks_are_copied(tmp_path, monkeypatch):
    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    copied, written = tmp_path / "copied" / "stats.zarr", tmp_path / "written" / "stats.zarr"
    for step in STEPS[:5]:
        _append(monkeypatch, False, step, written)
    monkeypatch.setattr(stats_store, "_hard_link", no_links)
    for step in STEPS[:5]:
        _append(monkeypatch, True, step, copied)
    assert _hashes(copied) == _hashes(written)
    assert all(os.stat(p).st_nlink == 1 for p in copied.rglob("*") if p.is_file())


def test_a_truncated_chunk_is_refused_not_linked(tmp_path, monkeypatch):
    store = tmp_path / "stats.zarr"
    for step in STEPS[:4]:
        _append(monkeypatch, True, step, store)
    chunk = store / "area_m2" / "c.0.1.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    hashes = _hashes(store)
    with pytest.raises(InputError, match="statistics store is damaged"):
        _append(monkeypatch, True, STEPS[4], store)
    assert _hashes(store) == hashes
    assert [p.name for p in store.parent.iterdir()] == ["stats.zarr"]


def test_a_failed_swap_leaves_the_old_store_and_its_links_alone(tmp_path, monkeypatch):
    store = tmp_path / "stats.zarr"
    for step in STEPS[:4]:
        _append(monkeypatch, True, step, store)
    hashes = _hashes(store)

    def fail(new, target):
        raise OSError("swap refused (test)")

    monkeypatch.setattr(stats_store, "swap_in", fail)
    monkeypatch.setattr(raster_stats, "FAST_APPEND", True)
    with pytest.raises(OSError, match="swap refused"):
        _append(monkeypatch, True, STEPS[4], store)
    assert _hashes(store) == hashes
    assert [p.name for p in store.parent.iterdir()] == ["stats.zarr"]
    assert all(os.stat(p).st_nlink == 1 for p in store.rglob("*") if p.is_file())
