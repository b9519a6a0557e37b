"""End to end on a real Prefect server: deploy deploy/prefect.yaml, run both deployments on a process worker.

Starts ``prefect server start`` (SQLite and PREFECT_HOME in tmp_path) and ``prefect worker start``
as subprocesses in their own process groups, deploys with ``prefect --no-prompt deploy --all``
from the repository root, runs ``landcover/nightly`` and ``segment-volumes/batch`` with their
default parameters (the embedded demo data, written under ``$SEGPIPE_OUT`` = tmp_path) and waits
for Completed. Everything started here is terminated (process group, then killed) even on failure.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.deploy.conftest import get_json, prefect_exe

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]

POOL = "segpipe-local"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RUN_TIMEOUT_S = 300


def _tail(server, lines: int = 60) -> str:
    """The last ``lines`` of each process's log (server, worker)."""
    return "\n".join(f"--- {name} ---\n" + "\n".join(server.log(name).splitlines()[-lines:]) for name, _ in server.procs)


def _wait_final(api: str, run_ids: dict[str, str], timeout: float) -> dict[str, dict]:
    """Poll the flow runs until every one is in a final state; return each run's JSON."""
    deadline = time.monotonic() + timeout
    runs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        runs = {name: get_json(f"{api}/flow_runs/{rid}") for name, rid in run_ids.items()}
        if all(r["state"] and r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs.values()):
            return runs
        time.sleep(2)
    states = {n: (r["state"] or {}).get("type") for n, r in runs.items()}
    raise AssertionError(f"flow runs not finished after {timeout:.0f} s: {states}")


def _demo_models_present() -> None:
    from models.spec import load_spec

    for name in ("demo-landcover", "demo-ct"):
        checkpoint = load_spec(name).checkpoint
        if checkpoint is None or not checkpoint.is_file():
            pytest.skip(f"model '{name}' has no checkpoint at {checkpoint}: the default parameters cannot run")


def _fastapi_compatible() -> None:
    """prefect 3.8.8's server needs FastAPI < 0.151: from 0.151 FastAPI validates an explicit JSON
    null against ``limit: int = Body(None)``, so ``prefect deploy`` gets a 422 from
    ``POST /work_pools/<pool>/workers/filter`` (its client sends ``"limit": null``)."""
    import fastapi

    major, minor = (int(p) for p in fastapi.__version__.split(".")[:2])
    if (major, minor) >= (0, 151):
        pytest.fail(
            f"fastapi {fastapi.__version__} is installed; the prefect 3.8.8 server rejects `prefect deploy` with it "
            "(422 on limit=null): pin fastapi<0.151 in pyproject.toml and constraints.txt and reinstall"
        )


def test_deployments_run_on_a_real_server(tmp_path, real_server_factory):
    _demo_models_present()
    _fastapi_compatible()
    out = tmp_path / "out"
    out.mkdir()
    server = real_server_factory(PREFECT_WORKER_QUERY_SECONDS="2", SEGPIPE_OUT=str(out))
    try:
        server.cli("work-pool", "create", POOL, "--type", "process", timeout=180)
        server.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml", timeout=180)
        server.start("worker", [prefect_exe(), "worker", "start", "--pool", POOL, "--name", "segpipe-test-worker"])

        nightly = server.get("/deployments/name/landcover/nightly")
        schedules = nightly["schedules"]
        assert len(schedules) == 1 and schedules[0]["active"] is True
        assert schedules[0]["schedule"]["cron"] == "0 2 * * *"
        assert schedules[0]["schedule"]["timezone"] == "Europe/Berlin"
        assert nightly["work_pool_name"] == POOL and nightly["entrypoint"] == "flows.landcover:landcover"
        batch = server.get("/deployments/name/segment-volumes/batch")
        assert batch["work_pool_name"] == POOL and batch["schedules"] == []

        run_ids = {}
        for name in ("landcover/nightly", "segment-volumes/batch"):
            printed = server.cli("deployment", "run", name, timeout=180)
            run_ids[name] = UUID.findall(printed)[-1]
        runs = _wait_final(server.api, run_ids, RUN_TIMEOUT_S)
        states = {name: (r["state"]["type"], r["state"].get("message")) for name, r in runs.items()}
        assert all(state == "COMPLETED" for state, _ in states.values()), f"{states}\n{_tail(server)}"
    except BaseException:
        print(_tail(server))
        raise
    finally:
        server.stop()

    land, vol = out / "landcover", out / "segment-volumes"
    for scene in ("demo-west", "demo-east"):
        assert (land / "demo-inputs" / f"{scene}.tif").is_file()
        assert (land / f"{scene}.labels.tif").is_file() and (land / f"{scene}.quicklook.png").is_file()
    assert (land / "stats.zarr" / "zarr.json").is_file()
    for study in ("phantom-001", "phantom-002"):
        assert (vol / "demo-inputs" / f"{study}.nii.gz").is_file()
        assert (vol / f"{study}.labels.nii.gz").is_file() and (vol / f"{study}.stats.json").is_file()
    assert (vol / "stats.zarr" / "zarr.json").is_file()
    assert all(proc.poll() is not None for _, proc in server.procs)
