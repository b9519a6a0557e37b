"""The deployment files parse and say what they must (Docker cannot run here, so their key fields are checked).

deploy/prefect.yaml, deploy/k8s-work-pool.json, deploy/Dockerfile and deploy/compose.yaml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deployments(project) -> dict[str, dict]:
    return {d["name"]: d for d in project["deployments"]}


def _load_flow(entrypoint: str):
    """The flow of a module entrypoint (``flows.landcover:landcover``), as a deployment loads it."""
    from prefect.flows import load_flow_from_entrypoint

    module, _name = entrypoint.split(":")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), entrypoint
    return load_flow_from_entrypoint(entrypoint)


def test_prefect_yaml_deployments_point_at_the_flows(deployments):
    assert set(deployments) == {"nightly", "batch"}
    nightly, batch = deployments["nightly"], deployments["batch"]
    # module entrypoints: a file entrypoint would load the flow as a top-level module ('landcover')
    # that Dask worker processes cannot import (tests/flows/test_ops_deployed_dask.py)
    assert nightly["entrypoint"] == "flows.landcover:landcover"
    assert batch["entrypoint"] == "flows.volumes:segment_volumes"
    assert _load_flow(nightly["entrypoint"]).name == "landcover"
    assert _load_flow(batch["entrypoint"]).name == "segment-volumes"
    for d in (nightly, batch):
        assert d["work_pool"]["name"] == "segpipe-local"


def test_nightly_schedule_is_an_active_cron_with_a_timezone(deployments):
    from prefect.client.schemas.schedules import CronSchedule

    (schedule,) = deployments["nightly"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is True
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.timezone == "Europe/Berlin"
    assert deployments["batch"]["schedules"] == []


def test_default_parameters_are_valid_and_name_the_demo_catalogs(deployments):
    for d in deployments.values():
        flow = _load_flow(d["entrypoint"])
        flow.validate_parameters(d["parameters"])  # raises on unknown names or wrong types
    assert deployments["nightly"]["parameters"] == {"catalog": "catalogs/scenes/demo.yaml"}
    assert deployments["batch"]["parameters"] == {"studies": "catalogs/studies/demo.yaml"}
    for path in ("catalogs/scenes/demo.yaml", "catalogs/studies/demo.yaml"):
        assert (REPO / path).is_file()


def test_demo_catalogs_parse_and_name_demo_models():
    from flows.catalog import load_scene_catalog, load_study_catalog
    from models.spec import load_spec

    scenes = load_scene_catalog(REPO / "catalogs/scenes/demo.yaml")
    studies = load_study_catalog(REPO / "catalogs/studies/demo.yaml")
    assert scenes.demo is not None and studies.demo is not None
    assert all(s.startswith("{output}/") for s in (*scenes.scenes, scenes.regions, *studies.studies))
    assert load_spec(scenes.model).task == "raster" and load_spec(studies.model).task == "volume"


@pytest.fixture(scope="module")
def k8s() -> dict:
    return json.loads((DEPLOY / "k8s-work-pool.json").read_text())


def test_k8s_work_pool_requests_one_gpu(k8s):
    from prefect.utilities.templating import apply_values

    container = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["args"] == "{{ command }}" and container["env"] == "{{ env }}"
    defaults = {name: prop["default"] for name, prop in k8s["variables"]["properties"].items() if "default" in prop}
    assert defaults["gpu_count"] == 1
    rendered = apply_values(k8s["job_configuration"], defaults)
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["image"] == defaults["image"] == "registry.example.com/segpipe:0.1.0"  # says: push to your registry
    assert pod["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}  # the image's user writes /data
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "segpipe-data"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert rendered["env"]["SEGPIPE_OUT"].startswith("/data/")


def test_dockerfile_uses_a_cuda_runtime_and_installs_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    assert re.search(r"pip install .*-c /tmp/constraints\.txt -e \.", text)
    assert re.search(r"pip install \"torch==\$\{TORCH_VERSION\}\" --index-url", text)
    for folder in ("pipeline", "models", "flows", "catalogs", "deploy"):
        assert re.search(rf"^COPY {folder}/ {folder}/", text, re.M), folder
    assert 'CMD ["prefect", "worker", "start", "--pool", "segpipe-local"' in text


def test_compose_runs_server_postgres_worker_and_a_dask_cluster():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker", "dask-scheduler", "dask-worker-1", "dask-worker-2"} <= set(services)
    server = services["prefect-server"]
    assert server["command"][:3] == ["prefect", "server", "start"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:prefect@postgres:5432/")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "segpipe-local"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["dask-scheduler"]["command"][:2] == ["dask", "scheduler"]
    for name in ("dask-worker-1", "dask-worker-2"):
        assert services[name]["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
        assert "segpipe-data:/data" in services[name]["volumes"]
    assert "segpipe-data:/data" in worker["volumes"]
