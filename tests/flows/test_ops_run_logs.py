"""Library log records (``pipeline.*``) emitted inside a task run reach the run's logs on the Prefect API,
and each task logs a one-line summary of its scene or study.

A scene that none of the regions meets is segmented without statistics, with a WARNING from
``pipeline.raster.run``; before, that record went to the worker's console only, never to
``prefect flow-run logs``.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine

pytestmark = pytest.mark.usefixtures("prefect_server")

CRS = "EPSG:32633"


def _run_logs(flow_run_id) -> list[dict]:
    """The logs of one flow run (its task runs' included) read back from the server, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches by a background worker
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 200, "sort": "TIMESTAMP_ASC"})
    return response.json()


def test_a_pipeline_warning_inside_a_task_is_in_the_run_logs(tmp_path, pointwise_spec):
    import geopandas as gpd
    from shapely.geometry import box

    from flows.landcover import landcover

    scene = tmp_path / "far-tile.tif"
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "uint16", "crs": CRS, "transform": Affine(10, 0, 500_000, 0, -10, 5_350_000)}
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(np.full((4, 16, 16), 1800, np.uint16))
    regions = tmp_path / "districts.gpkg"
    gpd.GeoDataFrame({"name": ["elsewhere"]}, geometry=[box(600_000, 5_300_000, 601_000, 5_301_000)], crs=CRS).to_file(regions, driver="GPKG")
    spec = pointwise_spec(tmp_path / "model", task="raster", weight=np.array([[0.0, 0, 0, 0], [0, 0, 0, 1]]), bias=np.array([0.0, -1500.0]),
                          classes=[(0, "water"), (1, "forest")], window=[8, 8])

    state = landcover(scenes=[str(scene)], model=str(spec), regions=str(regions), out=str(tmp_path / "out"), device="cpu", return_state=True)
    assert state.is_completed(), state.message

    logs = _run_logs(state.state_details.flow_run_id)
    warnings = [entry for entry in logs if entry["name"] == "pipeline.raster.run" and entry["level"] == logging.WARNING]
    assert len(warnings) == 1, [(e["name"], e["message"]) for e in logs]
    assert "none of its 1 region(s)" in warnings[0]["message"] and "far-tile is segmented without statistics" in warnings[0]["message"]
    assert warnings[0]["task_run_id"] is not None  # attributed to the scene's task run
    (summary,) = [e["message"] for e in logs if e["message"].startswith("scene far-tile:")]
    assert str(scene) in summary and "far-tile.labels.tif" in summary and "block(s) run" in summary
    # the library loggers are back to their own settings once the task is done
    assert logging.getLogger("pipeline").level == logging.NOTSET
    assert not logging.getLogger("pipeline").handlers


def test_each_study_task_logs_a_summary_line(tmp_path, pointwise_spec):
    from flows.volumes import segment_volumes

    study = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((12, 10, 6), 150, np.int16), np.eye(4)), str(study))
    spec = pointwise_spec(tmp_path / "model", task="volume", weight=np.array([[0.0], [1.0]]), bias=np.array([0.0, -100.0]),
                          classes=[(0, "background"), (1, "tissue")], window=[4, 8, 8])
    state = segment_volumes(studies=[str(study)], model=str(spec), out=str(tmp_path / "out"), device="cpu", return_state=True)
    assert state.is_completed(), state.message
    (summary,) = [e for e in _run_logs(state.state_details.flow_run_id) if e["message"].startswith("study ct:")]
    assert str(study) in summary["message"] and "ct.labels.nii.gz" in summary["message"] and "block(s) run" in summary["message"]
    assert summary["task_run_id"] is not None


def test_library_records_in_the_run_logs_name_flow_parameters_not_cli_options(tmp_path, pointwise_spec):
    """The library words its advice for the command line (``--region-field``); a flow's user reads
    ``region_field=`` in the run logs, while the library's own record is left unchanged."""
    import geopandas as gpd
    from shapely.geometry import box

    from flows.landcover import landcover

    scene = tmp_path / "tile.tif"
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "uint16", "crs": CRS, "transform": Affine(10, 0, 500_000, 0, -10, 5_350_000)}
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(np.full((4, 16, 16), 1800, np.uint16))
    regions = tmp_path / "unnamed.gpkg"  # no 'name' attribute: regions are named by feature number, with a warning
    gpd.GeoDataFrame({"code": [7]}, geometry=[box(500_000, 5_349_840, 500_160, 5_350_000)], crs=CRS).to_file(regions, driver="GPKG")
    spec = pointwise_spec(tmp_path / "model", task="raster", weight=np.array([[0.0, 0, 0, 0], [0, 0, 0, 1]]), bias=np.array([0.0, -1500.0]),
                          classes=[(0, "water"), (1, "forest")], window=[8, 8])

    state = landcover(scenes=[str(scene)], model=str(spec), regions=str(regions), out=str(tmp_path / "out"), device="cpu", return_state=True)
    assert state.is_completed(), state.message

    (warning,) = [e["message"] for e in _run_logs(state.state_details.flow_run_id) if "feature number" in e["message"]]
    assert "region_field=" in warning and "--region-field" not in warning, warning
