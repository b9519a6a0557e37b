"""End to end on a real Prefect server: deploy deploy/prefect.yaml, run both deployments on a process worker.

Starts ``prefect server start`` (SQLite and PREFECT_HOME in tmp_path) and ``prefect worker start``
as subprocesses in their own process groups, deploys with ``prefect --no-prompt deploy --all``
from the repository root, runs ``landcover/nightly`` and ``segment-volumes/batch`` with their
default parameters (the embedded demo data, written under ``$SEGPIPE_OUT`` = tmp_path) and waits
for Completed. Everything started here is terminated (process group, then killed) even on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
POOL = "segpipe-local"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect() -> str:
    """The ``prefect`` executable of the interpreter running the tests (the project's venv)."""
    candidate = Path(sys.executable).with_name("prefect")
    found = str(candidate) if candidate.is_file() else shutil.which("prefect")
    if not found:
        pytest.skip("the prefect command is not installed next to this Python")
    return found


class Stack:
    """Subprocesses started by the test, each in its own session (process group), with their logs."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def run(self, args: list[str], timeout: float = 180) -> str:
        done = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def tail(self, lines: int = 60) -> str:
        text = []
        for name, _ in self.procs:
            content = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            text.append(f"--- {name} ---\n" + "\n".join(content))
        return "\n".join(text)


def _get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait_healthy(api: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"prefect server exited with {server.returncode}")
        try:
            if _get(f"{api}/health") is True:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout:.0f} s")


def _wait_final(api: str, run_ids: dict[str, str], timeout: float) -> dict[str, dict]:
    """Poll the flow runs until every one is in a final state; return each run's JSON."""
    deadline = time.monotonic() + timeout
    runs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        runs = {name: _get(f"{api}/flow_runs/{rid}") for name, rid in run_ids.items()}
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


def test_deployments_run_on_a_real_server(tmp_path):
    _demo_models_present()
    _fastapi_compatible()
    prefect = _prefect()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home, out, logs = tmp_path / "prefect-home", tmp_path / "out", tmp_path / "logs"
    for folder in (home, out, logs):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_CLI_WRAP_LINES="false",
        COLUMNS="200",
        SEGPIPE_OUT=str(out),
    )
    stack = Stack(env, logs)
    try:
        server = stack.start("server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        _wait_healthy(api, server)
        stack.run([prefect, "work-pool", "create", POOL, "--type", "process"])
        stack.run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"])
        stack.start("worker", [prefect, "worker", "start", "--pool", POOL, "--name", "segpipe-test-worker"])

        nightly = _get(f"{api}/deployments/name/landcover/nightly")
        schedules = nightly["schedules"]
        assert len(schedules) == 1 and schedules[0]["active"] is True
        assert schedules[0]["schedule"]["cron"] == "0 2 * * *"
        assert schedules[0]["schedule"]["timezone"] == "Europe/Berlin"
        assert nightly["work_pool_name"] == POOL and nightly["entrypoint"] == "flows.landcover:landcover"
        batch = _get(f"{api}/deployments/name/segment-volumes/batch")
        assert batch["work_pool_name"] == POOL and batch["schedules"] == []

        run_ids = {}
        for name in ("landcover/nightly", "segment-volumes/batch"):
            printed = stack.run([prefect, "deployment", "run", name])
            run_ids[name] = UUID.findall(printed)[-1]
        runs = _wait_final(api, run_ids, RUN_TIMEOUT_S)
        states = {name: (r["state"]["type"], r["state"].get("message")) for name, r in runs.items()}
        assert all(state == "COMPLETED" for state, _ in states.values()), f"{states}\n{stack.tail()}"
    except BaseException:
        print(stack.tail())
        raise
    finally:
        stack.stop()

    land, vol = out / "landcover", out / "segment-volumes"
    for scene in ("demo-west", "demo-east"):
        assert (land / "demo-inputs" / f"{scene}.tif").is_file()
        assert (land / f"{scene}.labels.tif").is_file() and (land / f"{scene}.quicklook.png").is_file()
    assert (land / "stats.zarr" / "zarr.json").is_file()
    for study in ("phantom-001", "phantom-002"):
        assert (vol / "demo-inputs" / f"{study}.nii.gz").is_file()
        assert (vol / f"{study}.labels.nii.gz").is_file() and (vol / f"{study}.stats.json").is_file()
    assert (vol / "stats.zarr" / "zarr.json").is_file()
    assert all(proc.poll() is not None for _, proc in stack.procs)
