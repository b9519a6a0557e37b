"""Shared fixtures of the flow tests: one ephemeral Prefect server per session, tiny per-pixel models.

The server (``prefect_test_harness``) takes 6-15 s to start, so every flow test of the session
shares it; flows run against it for real (task runs, retries, artifacts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite in a temp folder) for all flow tests of the session
    (modules that run flows use it with ``pytestmark = pytest.mark.usefixtures("prefect_server")``)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def pointwise_spec():
    """``pointwise_spec(folder, task=..., weight=..., bias=..., classes=..., window=...) -> spec path``."""
    return write_pointwise_spec


@pytest.fixture
def artifacts_of():
    """``artifacts_of(flow_run_id) -> {key: artifact}`` read back through the Prefect client."""
    return read_artifacts


@pytest.fixture
def rows_of():
    """``rows_of(table_artifact) -> list of row dicts``."""
    return table_rows


def write_pointwise_spec(folder: Path, *, task: str, weight: np.ndarray, bias: np.ndarray, classes: list[tuple[int, str]], window: list[int]) -> Path:
    """A model spec YAML + safetensors checkpoint for a per-pixel linear model (``Conv2d``/``Conv3d``, kernel 1).

    Args:
        folder: where ``model.yaml`` and ``model.safetensors`` go.
        task: ``raster`` (Conv2d) or ``volume`` (Conv3d).
        weight: ``(K, C)`` per-class weights on the input channels.
        bias: ``(K,)`` per-class biases.
        classes: ``(id, name)`` per output channel.
        window: the sliding window (``[y, x]`` or ``[z, y, x]``).
    """
    import torch
    from safetensors.torch import save_file

    dims = 2 if task == "raster" else 3
    k, c = weight.shape
    folder.mkdir(parents=True, exist_ok=True)
    kernel = torch.tensor(weight, dtype=torch.float32).reshape(k, c, *([1] * dims))
    save_file({"weight": kernel.contiguous(), "bias": torch.tensor(bias, dtype=torch.float32)}, str(folder / "model.safetensors"))
    spec = {
        "name": f"pointwise-{task}",
        "task": task,
        "architecture": f"torch.nn:Conv{dims}d",
        "params": {"in_channels": c, "out_channels": k, "kernel_size": 1},
        "in_channels": c,
        "classes": [{"id": i, "name": n} for i, n in classes],
        "window": window,
        "overlap": 0.25,
        "blend": "gaussian",
        "normalize": {"kind": "none"},
        "checkpoint": "model.safetensors",
    }
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_artifacts(flow_run_id) -> dict[str, object]:
    """The artifacts of one flow run, by key (read back from the server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import Artifact

    # POST /artifacts/filter directly: in prefect 3.8.8 both clients' read_artifacts send null for
    # the filters they are not given, which this server rejects (422), and an empty flow-run or
    # task-run filter matches nothing
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 200})
    artifacts = Artifact.model_validate_list(response.json())
    return {a.key: a for a in artifacts}


def table_rows(artifact) -> list[dict]:
    """The rows of a table artifact (stored as JSON text)."""
    import json

    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data
