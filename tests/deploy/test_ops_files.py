"""Pins and deployment files that the platform review checked: versions agree everywhere, the
Kubernetes pool template renders for CPU-only pods, and prefect.yaml's limits and entrypoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_sqlalchemy_and_fastapi_pins_agree_and_hold_in_this_environment():
    import fastapi
    import sqlalchemy

    deps = _pyproject()["project"]["dependencies"]
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    assert "sqlalchemy>=2.0,<2.1" in deps and "sqlalchemy>=2.0,<2.1" in constraints
    assert "fastapi<0.151" in deps and "fastapi<0.151" in constraints
    assert tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) == (2, 0), (
        f"sqlalchemy {sqlalchemy.__version__}: prefect 3.8.8's scheduler creates no runs with 2.1 (pip install 'sqlalchemy<2.1')"
    )
    assert tuple(int(p) for p in fastapi.__version__.split(".")[:2]) < (0, 151)
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "fastapi < 0.151" in dockerfile and "0.155" not in dockerfile


def test_k8s_extra_is_optional_and_pins_a_prefect_3_8_compatible_prefect_kubernetes():
    project = _pyproject()["project"]
    assert project["optional-dependencies"]["k8s"] == ["prefect-kubernetes>=0.8,<0.9"]
    assert not any(d.startswith("prefect-kubernetes") for d in project["dependencies"])


def test_k8s_template_renders_a_cpu_only_pod():
    from prefect.utilities.templating import apply_values

    k8s = json.loads((REPO / "deploy" / "k8s-work-pool.json").read_text())
    defaults = {name: prop["default"] for name, prop in k8s["variables"]["properties"].items() if "default" in prop}
    rendered = apply_values(k8s["job_configuration"], {**defaults, "gpu_count": 0, "node_selector": {}})
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert "registry" in k8s["variables"]["properties"]["image"]["description"]
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(k8s["job_configuration"])))
    assert placeholders <= set(k8s["variables"]["properties"]), placeholders - set(k8s["variables"]["properties"])


def test_prefect_yaml_limits_each_deployment_to_one_run_and_uses_module_entrypoints():
    project = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    for deployment in project["deployments"]:
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert re.fullmatch(r"flows\.\w+:\w+", deployment["entrypoint"]), deployment["entrypoint"]
