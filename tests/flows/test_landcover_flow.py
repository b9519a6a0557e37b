"""The ``landcover`` flow on tiny real GeoTIFFs with a per-pixel model (Conv2d, kernel 1).

The model thresholds the NIR band (band 4): < 1000 -> water (0), 1000..2000 -> forest (1),
> 2000 -> urban (2), so every output pixel, and so every area, is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from flows import landcover as lflow
from flows.landcover import landcover

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")]

CLASSES = [(0, "water"), (1, "forest"), (2, "urban")]
# logits: water 0, forest nir - 1000, urban 2 nir - 3000
WEIGHT = np.array([[0.0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2]])
BIAS = np.array([0.0, -1000.0, -3000.0])
CRS = "EPSG:32633"
SHAPE = (40, 56)  # (Y, X)


def _transform(index: int) -> Affine:
    """Scene ``index`` of a strip of 10 m tiles, west to east."""
    return Affine(10.0, 0.0, 500_000.0 + index * SHAPE[1] * 10.0, 0.0, -10.0, 5_350_000.0)


def _write_scene(path: Path, seed: int, transform: Affine) -> np.ndarray:
    """A 4-band uint16 GeoTIFF whose NIR band takes values in three ranges; returns the expected labels ``(Y, X)``."""
    rng = np.random.default_rng(seed)
    nir = rng.choice(np.array([300, 800, 1300, 1700, 2400, 3900], np.uint16), size=SHAPE)
    image = np.stack([rng.integers(0, 3000, SHAPE, dtype=np.uint16) for _ in range(3)] + [nir])
    profile = {"driver": "GTiff", "width": SHAPE[1], "height": SHAPE[0], "count": 4, "dtype": "uint16", "crs": CRS, "transform": transform}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return np.where(nir > 2000, 2, np.where(nir > 1000, 1, 0)).astype(np.uint8)


def _write_regions(path: Path) -> dict[str, tuple[slice, slice]]:
    """Two pixel-aligned rectangles in the raster CRS (exact coverage), over the strip of two scenes.

    Returns each region's ``(rows, cols)`` on the strip's pixel grid.
    """
    import geopandas as gpd
    from shapely.geometry import box

    cells = {"north": (slice(0, 16), slice(8, 100)), "south": (slice(24, 40), slice(0, 40))}
    t = _transform(0)
    geoms = [box(*(t @ (c.start, r.stop)), *(t @ (c.stop, r.start))) for r, c in cells.values()]
    gpd.GeoDataFrame({"district": list(cells)}, geometry=geoms, crs=CRS).to_file(path, driver="GPKG")
    return cells


def _expected_areas(labels: dict[str, np.ndarray], cells) -> dict[tuple[str, str, str], float]:
    """Ellipsoidal area (m^2) per (scene, region, class) from the known labels."""
    from pipeline.raster.areas import pixel_area_m2

    expected = {}
    for index, (scene, lab) in enumerate(labels.items()):
        areas = pixel_area_m2(CRS, _transform(index), slice(0, SHAPE[0]), slice(0, SHAPE[1]))
        for region, (rows, cols) in cells.items():
            c0, c1 = cols.start - index * SHAPE[1], cols.stop - index * SHAPE[1]
            c0, c1 = max(c0, 0), min(c1, SHAPE[1])
            for cid, cname in CLASSES:
                inside = lab[rows, c0:c1] == cid if c1 > c0 else np.zeros((0,), bool)
                expected[(scene, region, cname)] = float(areas[rows, c0:c1][inside].sum()) if c1 > c0 else 0.0
    return expected


@pytest.fixture
def scenes(tmp_path, pointwise_spec):
    folder = tmp_path / "scenes"
    folder.mkdir()
    labels = {name: _write_scene(folder / f"{name}.tif", seed, _transform(i)) for i, (name, seed) in enumerate([("west", 1), ("east", 2)])}
    (folder / "corrupt.tif").write_bytes(b"II*\x00 not really a tiff")
    cells = _write_regions(folder / "districts.gpkg")
    spec = pointwise_spec(tmp_path / "model", task="raster", weight=WEIGHT, bias=BIAS, classes=CLASSES, window=[16, 16])
    return folder, spec, labels, cells


def test_catalog_run_writes_georeferenced_labels_areas_and_artifacts(scenes, tmp_path, artifacts_of, rows_of):
    folder, spec, labels, cells = scenes
    catalog = folder / "nightly.yaml"
    catalog.write_text(
        f"model: {spec}\n"
        "scenes: [west.tif, corrupt.tif, east.tif]\n"
        "regions: districts.gpkg\n"
        "region_field: district\n"
        "output: ../out\n"
    )
    state = landcover(catalog=str(catalog), device="cpu", block=32, return_state=True)

    assert state.is_completed(), state.message
    assert state.name == "Completed with failures" and state.message == "1 of 3 scene(s) failed; see the landcover-failures artifact"
    report = state.result()
    out = tmp_path / "out"
    assert Path(report.out_dir) == out.resolve()
    assert [o.name for o in report.outputs] == ["west", "east"]
    for index, (name, expected) in enumerate(labels.items()):
        with rasterio.open(out / f"{name}.labels.tif") as src, rasterio.open(folder / f"{name}.tif") as ref:
            assert src.crs == ref.crs
            assert src.transform == ref.transform == _transform(index)
            np.testing.assert_array_equal(src.read(1), expected)
        assert (out / f"{name}.quicklook.png").is_file()

    assert [(f.item, f.error) for f in report.failures] == [(str(folder / "corrupt.tif"), "InputError")]
    assert "corrupt.tif" in report.failures[0].message

    with xr.open_zarr(out / "stats.zarr") as ds:
        assert {"region", "class", "time", "scene"} <= set(ds.area_m2.dims)
        assert [str(t)[:19] for t in ds.time.values] == [report.time]

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert {"landcover-areas", "landcover-failures", "landcover-summary"} <= set(artifacts)
    rows = rows_of(artifacts["landcover-areas"])
    expected = _expected_areas(labels, cells)
    got = {(r["scene"], r["region"], r["class"]): r["area_m2"] for r in rows}
    assert set(got) <= set(expected) and {k for k, v in expected.items() if v > 0} <= set(got)
    for key, area in got.items():
        assert area == pytest.approx(expected[key], abs=0.01), key
    assert sum(got.values()) == pytest.approx(sum(expected.values()), abs=0.1)
    assert [r["item"] for r in rows_of(artifacts["landcover-failures"])] == [str(folder / "corrupt.tif")]
    summary = artifacts["landcover-summary"].data
    for name in labels:
        assert str(out / f"{name}.labels.tif") in summary and str(out / f"{name}.quicklook.png") in summary
    assert "corrupt.tif" in summary


def test_explicit_lists_override_and_all_failed_fails(tmp_path, scenes, artifacts_of, rows_of):
    folder, spec, _, _ = scenes
    missing = tmp_path / "nowhere.tif"
    state = landcover(scenes=[str(folder / "corrupt.tif"), str(missing)], model=str(spec), out=str(tmp_path / "o"), device="cpu", return_state=True)
    assert state.is_failed()
    rows = rows_of(artifacts_of(state.state_details.flow_run_id)["landcover-failures"])
    assert [(r["item"], r["error"]) for r in rows] == [(str(folder / "corrupt.tif"), "InputError"), (str(missing), "InputError")]


def test_io_errors_are_retried_and_bad_input_is_not(scenes, tmp_path, monkeypatch):
    import pipeline.raster.run as run
    from rasterio.errors import RasterioIOError

    folder, spec, labels, _ = scenes
    real = run.segment_raster
    calls: list[str] = []

    def flaky(image, *args, **kwargs):
        calls.append(Path(image).name)
        if Path(image).name == "west.tif" and calls.count("west.tif") <= 2:
            raise RasterioIOError("HTTP response code: 503 (simulated)")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(run, "segment_raster", flaky)
    monkeypatch.setattr(lflow, "segment_scene", lflow.segment_scene.with_options(retry_delay_seconds=0))
    report = landcover(
        scenes=[str(folder / "west.tif"), str(folder / "corrupt.tif")], model=str(spec), out=str(tmp_path / "o"),
        device="cpu", block=64, time="2024-06-01T02:00:00+02:00",
    )

    assert calls.count("west.tif") == 3  # two I/O failures, then the second retry succeeded
    assert calls.count("corrupt.tif") == 1  # InputError: never retried
    assert [o.name for o in report.outputs] == ["west"]
    with rasterio.open(tmp_path / "o" / "west.labels.tif") as src:
        np.testing.assert_array_equal(src.read(1), labels["west"])
    assert report.time == "2024-06-01T00:00:00"  # the given time, in UTC
    with xr.open_zarr(tmp_path / "o" / "stats.zarr") as ds:
        assert list(ds.time.values) == [np.datetime64("2024-06-01T00:00:00", "ns")]


def test_retry_rule():
    from flows._runtime import is_io_error
    from pipeline.errors import CheckpointError, InputError
    from rasterio.errors import RasterioIOError

    assert is_io_error(RasterioIOError("503"))
    assert is_io_error(ConnectionResetError()) and is_io_error(TimeoutError()) and is_io_error(OSError(5, "EIO"))
    assert not is_io_error(InputError("a.tif", "bad")) and is_io_error(InputError("https://h/a.tif", "server failed", transient=True))
    assert not is_io_error(CheckpointError("w.safetensors", "missing"))
    assert not is_io_error(FileNotFoundError("a.tif")) and not is_io_error(PermissionError())
    assert not is_io_error(ValueError("x")) and not is_io_error(None)


@pytest.mark.slow
def test_dask_task_runner(scenes, tmp_path):
    from distributed import LocalCluster

    folder, spec, labels, _ = scenes
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        report = landcover(
            scenes=[str(folder / "west.tif"), str(folder / "east.tif")], model=str(spec), out=str(tmp_path / "o"),
            device="cpu", block=32, dask_address=cluster.scheduler_address,
        )
    assert [o.name for o in report.outputs] == ["west", "east"] and not report.failures
    for name, expected in labels.items():
        with rasterio.open(tmp_path / "o" / f"{name}.labels.tif") as src:
            np.testing.assert_array_equal(src.read(1), expected)


def test_default_run_generates_and_segments_the_demo(tmp_path, monkeypatch, artifacts_of):
    from models.spec import load_spec

    if load_spec("demo-landcover").checkpoint is None or not load_spec("demo-landcover").checkpoint.is_file():
        pytest.skip("demo-landcover checkpoint not shipped yet")
    monkeypatch.setenv("SEGPIPE_OUT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    state = landcover(return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    out = tmp_path / "landcover"
    assert Path(report.out_dir) == out and not report.failures
    assert [o.name for o in report.outputs] == ["demo-west", "demo-east"]
    for name in ("demo-west", "demo-east"):
        with rasterio.open(out / f"{name}.labels.tif") as src, rasterio.open(out / "demo-inputs" / f"{name}.tif") as ref:
            assert (src.crs, src.transform, src.shape) == (ref.crs, ref.transform, ref.shape)
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert set(ds.region.values) == {"Northfield", "Riverside", "Old Town"}
    areas = json.loads(artifacts_of(state.state_details.flow_run_id)["landcover-areas"].data)
    assert {r["region"] for r in areas} == {"Northfield", "Riverside", "Old Town"}


def test_scenes_in_flight_grow_on_a_gpu_machine_only(monkeypatch):
    import torch

    from flows.landcover import local_scenes_in_flight

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert local_scenes_in_flight("auto") == 2  # no GPU here: more scenes would share the model's cores
    assert local_scenes_in_flight("cuda") == 2  # asked for, not there: the scenes report it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert local_scenes_in_flight("auto") == 4
    assert local_scenes_in_flight("cpu") == 2
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert local_scenes_in_flight("auto") == 2


def test_a_retried_night_skips_the_scenes_it_finished(scenes, tmp_path):
    """A run that crashed after its first scene is retried with the same time: the finished scene
    is skipped (its label COG not rewritten), the other segmented, the statistics complete."""
    folder, spec, labels, cells = scenes
    out = tmp_path / "out"
    night = "2024-06-01T01:00:00"
    common = {"model": str(spec), "regions": str(folder / "districts.gpkg"), "region_field": "district", "out": str(out),
              "device": "cpu", "block": 32, "time": night}
    first = landcover(scenes=[str(folder / "west.tif")], **common)
    assert [o.skipped for o in first.outputs] == [False]
    stamp = (out / "west.labels.tif").stat().st_mtime_ns

    retry = landcover(scenes=[str(folder / "west.tif"), str(folder / "east.tif")], **common)
    assert [(o.name, o.skipped) for o in retry.outputs] == [("west", True), ("east", False)]
    assert (out / "west.labels.tif").stat().st_mtime_ns == stamp
    for name, expected in labels.items():
        with rasterio.open(out / f"{name}.labels.tif") as src:
            np.testing.assert_array_equal(src.read(1), expected)
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert ds.sizes["time"] == 1 and sorted(ds.scene.values.tolist()) == ["east", "west"]
        assert not bool(ds.area_m2.sel(scene="west").isnull().all())


def test_region_layer_picks_the_layer_of_a_several_layer_file(scenes, tmp_path):
    """A GeoPackage with layers ``country`` then ``districts``: without ``region_layer`` the run is
    refused before any scene (the first layer was silently used); the catalog's ``region_layer``
    reaches every scene task and is recorded with the regions file."""
    import geopandas as gpd
    from shapely.geometry import box

    folder, spec, labels, cells = scenes
    regions = folder / "two.gpkg"
    gpd.GeoDataFrame({"district": ["all"]}, geometry=[box(499_000, 5_349_000, 502_000, 5_351_000)], crs=CRS).to_file(regions, layer="country", driver="GPKG")
    _write_regions(folder / "districts.gpkg")
    gpd.read_file(folder / "districts.gpkg").to_file(regions, layer="districts", driver="GPKG")
    out = tmp_path / "out"
    state = landcover(scenes=[str(folder / "west.tif")], model=str(spec), regions=str(regions), region_field="district", out=str(out),
                      device="cpu", block=32, return_state=True)
    assert state.is_failed() and "2 layers (country, districts)" in state.message and "region_layer=<name>" in state.message
    assert "--region-layer" not in state.message
    assert not (out / "west.labels.tif").exists()

    catalog = folder / "nightly.yaml"
    catalog.write_text(f"model: {spec}\nscenes: [west.tif]\nregions: two.gpkg\nregion_field: district\nregion_layer: districts\noutput: ../out\n")
    report = landcover(catalog=str(catalog), device="cpu", block=32)
    assert [o.name for o in report.outputs] == ["west"] and not report.failures
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert sorted(ds.region.values.tolist()) == ["north", "south"]
        assert str(ds["regions"].values.item()) == f"{regions}|layername=districts"
