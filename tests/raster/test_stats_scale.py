"""``stats.zarr`` reads and appends in memory bounded by what they need, not by the store: a country's
districts over years of nights do not fit in memory (3,000 regions x 100 scenes x 365 nights x 10 classes
is 38 GB as float64). Measured with tracemalloc (numpy's and zarr's buffers are traced) on a store of a
moderate size whose area variables are ~40 MB as float64."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import xarray as xr

from pipeline.raster.entries import check_store_accepts, entry_done, provenance_snapshot
from pipeline.raster.provenance import Provenance
from pipeline.raster.stats import TIME_ATTRS, _tidy, append_stats, area_over_time
from pipeline.stats_store import open_stats, replace_store

NIGHTS, SCENES, REGIONS, CLASSES = 40, 8, 500, 10  # area variables: 4 x 40 x 8 x 500 x 10 x 8 bytes = 51 MB
PER_CLASS = ("area_m2", "area_ha", "pixel_count", "share")
PER_REGION = ("nodata_area_m2", "region_area_m2", "region_total_area_m2")
MB = 2**20


def prov(scene: int = 0) -> Provenance:
    return Provenance(
        source=f"/data/s{scene}.tif", model="unet", checkpoint_sha256="c" * 64, regions="/data/r.gpkg", segpipe_version="0.1", inputs_sha256="i" * 64
    )


def _night(i: int) -> np.datetime64:
    return np.datetime64("2026-01-01T02:00:00", "ns") + i * np.timedelta64(1, "D")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    dims = ("time", "scene", "region", "class")
    data = {name: (dims, rng.random((NIGHTS, SCENES, REGIONS, CLASSES))) for name in PER_CLASS}
    data |= {name: (dims[:3], rng.random((NIGHTS, SCENES, REGIONS)) + 1) for name in PER_REGION}
    data["region_total_area_m2"] = (dims[:3], np.full((NIGHTS, SCENES, REGIONS), 1e9))
    data |= {k: (dims[:2], np.full((NIGHTS, SCENES), v, dtype=object)) for k, v in prov().as_dict().items()}
    ds = xr.Dataset(
        data,
        coords={
            "time": [_night(i) for i in range(NIGHTS)],
            "scene": np.array([f"s{i}" for i in range(SCENES)], dtype=object),
            "region": np.array([f"d{i:04d}" for i in range(REGIONS)], dtype=object),
            "class": np.array([f"c{i}" for i in range(CLASSES)], dtype=object),
            "class_id": ("class", np.arange(CLASSES)),
            "class_color": ("class", np.array(["#000000"] * CLASSES, dtype=object)),
        },
    )
    ds["time"].attrs.update(TIME_ATTRS)
    path = tmp_path_factory.mktemp("scale") / "stats.zarr"
    replace_store(_tidy(ds), path)
    return path, ds


def _peak(fn) -> tuple[object, float]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def test_area_over_time_reads_one_class_and_region_not_the_store(store):
    path, ds = store
    got, peak = _peak(lambda: area_over_time(path, "c3", "d0123", scene="s5"))
    np.testing.assert_array_equal(got.values, ds["area_m2"].sel({"class": "c3", "region": "d0123", "scene": "s5"}).values)
    summed, _ = _peak(lambda: area_over_time(path, 3, "d0123"))
    np.testing.assert_allclose(summed.values, ds["area_m2"].sel({"class": "c3", "region": "d0123"}).sum("scene").values)
    assert peak < 12, f"{peak:.0f} MB traced: the whole store read (51 MB of areas), not one class and region"


def test_the_checks_before_a_run_read_the_provenance_not_the_areas(store):
    path, _ = store
    snapshot, peak = _peak(lambda: provenance_snapshot(path))
    assert peak < 8, f"{peak:.0f} MB traced: the checks before a scene read the whole store"
    assert "area_m2" not in snapshot and set(prov().as_dict()) <= set(snapshot.data_vars)
    assert (snapshot.sizes["time"], snapshot.sizes["scene"]) == (NIGHTS, SCENES)
    assert entry_done(snapshot, time=_night(3), scene="s2", provenance=prov())
    check_store_accepts(path, time=_night(3), scene="s2", source=prov().source, classes=[(i, f"c{i}") for i in range(CLASSES)], snapshot=snapshot)
    entry = open_stats(path, lambda d: d.sel(time=_night(3), scene="s2"))
    assert entry["area_m2"].dims == ("region", "class")


def _entry(scene: int, value: float) -> xr.Dataset:
    return xr.Dataset(
        {name: (("region", "class"), np.full((REGIONS, CLASSES), value)) for name in PER_CLASS}
        | {name: ("region", np.full(REGIONS, value)) for name in PER_REGION},
        coords={
            "region": np.array([f"d{i:04d}" for i in range(REGIONS)], dtype=object),
            "class": np.array([f"c{i}" for i in range(CLASSES)], dtype=object),
            "class_id": ("class", np.arange(CLASSES)),
            "class_color": ("class", np.array(["#000000"] * CLASSES, dtype=object)),
        },
    )


def test_a_scenes_append_holds_its_own_chunk_not_every_scenes(store, tmp_path):
    """The Nth scene's append of a night: its chunk (32 nights x 500 regions x 10 classes, 1.3 MB a variable),
    not the chunk of all scenes (10 MB a variable, 8 scenes: grows with the scenes of a night)."""
    import shutil

    path = tmp_path / "stats.zarr"
    shutil.copytree(store[0], path)
    _, peak = _peak(lambda: append_stats(_entry(7, 5.0), path, time=_night(NIGHTS - 1), scene="s7", provenance=prov()))
    assert peak < 16, f"{peak:.0f} MB traced for one scene's append"
    _, new_night = _peak(lambda: append_stats(_entry(0, 6.0), path, time=_night(NIGHTS), scene="s0", provenance=prov()))
    assert new_night < 16, f"{new_night:.0f} MB traced for a new night's first scene"
    after = open_stats(path, lambda d: d[["area_m2"]].isel(time=[-2, -1]))
    assert (after["area_m2"].sel(scene="s7").values[0] == 5.0).all() and (after["area_m2"].sel(scene="s0").values[1] == 6.0).all()
    assert np.isnan(after["area_m2"].sel(scene="s7").values[1]).all()  # other scenes: nothing at the new night
    np.testing.assert_array_equal(after["area_m2"].sel(scene="s3").values[0], store[1]["area_m2"].sel(scene="s3").values[-1])


def test_a_new_scene_rewrites_the_store_chunk_by_chunk(store, tmp_path):
    """A new scene joining the store takes the whole rewrite (every array grows along ``scene``): it streams
    the old store chunk by chunk (32 nights x 1 scene x 500 regions x 10 classes, 1.3 MB), not the whole store
    (51 MB of areas, held twice while merged before)."""
    import shutil

    import zarr

    path = tmp_path / "stats.zarr"
    shutil.copytree(store[0], path)
    _, peak = _peak(lambda: append_stats(_entry(SCENES, 7.0), path, time=_night(NIGHTS - 1), scene=f"s{SCENES}", provenance=prov(SCENES)))
    assert peak < 24, f"{peak:.0f} MB traced for a new scene's append (the store's areas are 51 MB)"
    after = open_stats(path, lambda d: d.sel(scene=[f"s{SCENES}", "s3"]))
    assert after.sizes["scene"] == 2 and open_stats(path, lambda d: d[["source"]]).sizes == {"time": NIGHTS, "scene": SCENES + 1}
    new = after.sel(scene=f"s{SCENES}")
    assert (new["area_m2"].values[-1] == 7.0).all() and np.isnan(new["area_m2"].values[:-1]).all()
    assert str(new["source"].values[-1]) == prov(SCENES).source and (new["source"].values[:-1] == "").all()
    np.testing.assert_array_equal(after["area_m2"].sel(scene="s3").values, store[1]["area_m2"].sel(scene="s3").values)
    group = zarr.open_group(path, mode="r")
    assert group.attrs["segpipe_every_chunk"] == 1
    assert group["area_m2"].chunks == (32, 1, REGIONS, CLASSES) and group["area_m2"].dtype == np.float64
    assert group["source"].dtype.kind == "U" and group["source"].chunks == (32, SCENES + 1)
