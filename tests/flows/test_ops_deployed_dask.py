"""Both flows loaded the way a deployment loads them (the entrypoint string of deploy/prefect.yaml)
and run with ``dask_address`` on a real LocalCluster with worker *processes*.

A file entrypoint (``flows/landcover.py:landcover``) makes Prefect execute the file as a top-level
module ``landcover``; cloudpickle then sends the tasks to the workers by reference to that module,
which a worker process cannot import (``ModuleNotFoundError: No module named 'landcover'``) and the
run ends Failed ("Run is in PENDING state"). The cluster is started *before* the flow is loaded, as
a real cluster is, so its workers do not inherit the ``sys.path`` entry Prefect adds while loading.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
CRS = "EPSG:32633"


def _entrypoint(deployment: str) -> str:
    project = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    (found,) = [d["entrypoint"] for d in project["deployments"] if d["name"] == deployment]
    return found


@pytest.fixture
def deployed_flow(monkeypatch):
    """``deployed_flow(deployment_name) -> Flow``, loaded from the entrypoint in the repository root
    (a deployment's working directory); Prefect's changes to ``sys.path``/``sys.modules`` are undone after."""
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield lambda name: load_flow_from_entrypoint(_entrypoint(name))
    for added in set(sys.modules) - before:
        if added in ("landcover", "volumes") or added.startswith("__prefect_loader_"):
            del sys.modules[added]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as running:
        yield running


def test_landcover_deployment_entrypoint_runs_on_dask_worker_processes(cluster, deployed_flow, tmp_path, pointwise_spec):
    from flows.landcover import landcover as local_flow

    rng = np.random.default_rng(3)
    image = rng.integers(0, 3000, (4, 24, 40), dtype=np.uint16)
    scene = tmp_path / "tile.tif"
    profile = {"driver": "GTiff", "width": 40, "height": 24, "count": 4, "dtype": "uint16", "crs": CRS, "transform": Affine(10, 0, 500_000, 0, -10, 5_350_000)}
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(image)
    spec = pointwise_spec(tmp_path / "model", task="raster", weight=np.array([[0.0, 0, 0, 0], [0, 0, 0, 1]]), bias=np.array([0.0, -1500.0]),
                          classes=[(0, "water"), (1, "forest")], window=[16, 16])
    params = dict(scenes=[str(scene)], model=str(spec), device="cpu", block=16)

    flow = deployed_flow("nightly")
    state = flow(**params, out=str(tmp_path / "dask"), dask_address=cluster.scheduler_address, return_state=True)
    assert state.is_completed(), state.message
    assert not state.result().failures, state.result().failures
    local = local_flow(**params, out=str(tmp_path / "local"), return_state=True)
    assert local.is_completed(), local.message
    with rasterio.open(tmp_path / "dask" / "tile.labels.tif") as a, rasterio.open(tmp_path / "local" / "tile.labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.transform == b.transform and a.crs == b.crs


def test_segment_volumes_deployment_entrypoint_runs_on_dask_worker_processes(cluster, deployed_flow, tmp_path, pointwise_spec):
    from flows.volumes import segment_volumes as local_flow

    values = np.random.default_rng(4).choice(np.array([0, 150, 400], np.int16), size=(6, 10, 12))
    study = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(values.transpose(2, 1, 0), np.diag([1.5, 1.0, 2.0, 1.0])), str(study))
    spec = pointwise_spec(tmp_path / "model", task="volume", weight=np.array([[0.0], [1.0]]), bias=np.array([0.0, -100.0]),
                          classes=[(0, "background"), (1, "tissue")], window=[4, 8, 8])
    params = dict(studies=[str(study)], model=str(spec), device="cpu")

    flow = deployed_flow("batch")
    state = flow(**params, out=str(tmp_path / "dask"), dask_address=cluster.scheduler_address, return_state=True)
    assert state.is_completed(), state.message
    assert not state.result().failures, state.result().failures
    local = local_flow(**params, out=str(tmp_path / "local"), return_state=True)
    assert local.is_completed(), local.message
    a, b = nib.load(str(tmp_path / "dask" / "ct.labels.nii.gz")), nib.load(str(tmp_path / "local" / "ct.labels.nii.gz"))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)
