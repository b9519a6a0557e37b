"""deploy/prefect.yaml on a real ``prefect server``: the scheduler service creates the nightly runs,
and the deployments carry their concurrency limit.

One server per module (scheduler loop shortened to 1 s), one ``prefect deploy --all`` of the
repository's deploy/prefect.yaml; no flow runs are executed here (tests/deploy/test_prefect_server.py
does that).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
POOL = "segpipe-local"
SCHEDULE_WAIT_S = 40


@pytest.fixture(scope="module")
def deployed(real_server_factory):
    """A real server with deploy/prefect.yaml deployed from the repository root."""
    server = real_server_factory(PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1")
    server.cli("work-pool", "create", POOL, "--type", "process")
    server.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml", timeout=180)
    return server


def _scheduled_runs(server, deployment_id: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 50}
    return server.get("/flow_runs/filter", body)


def test_the_scheduler_service_creates_runs_of_the_nightly_cron(deployed):
    """With SQLAlchemy 2.1 the scheduler service of prefect 3.8.8 fails every loop ('Can't evaluate
    bulk DML statement') and no run is ever scheduled; pinned to 2.0 it creates the next nights' runs."""
    nightly = deployed.get("/deployments/name/landcover/nightly")
    (schedule,) = yaml.safe_load((REPO / "deploy/prefect.yaml").read_text())["deployments"][0]["schedules"]
    assert nightly["schedules"][0]["schedule"]["cron"] == schedule["cron"]
    deadline = time.monotonic() + SCHEDULE_WAIT_S
    runs = _scheduled_runs(deployed, nightly["id"])
    while not runs and time.monotonic() < deadline:
        time.sleep(0.5)
        runs = _scheduled_runs(deployed, nightly["id"])
    errors = sorted({line.strip() for line in deployed.log("server").splitlines() if "Error:" in line})
    assert runs, f"no SCHEDULED run of landcover/nightly after {SCHEDULE_WAIT_S} s; server errors:\n" + "\n".join(errors[-20:])
    berlin = ZoneInfo(schedule["timezone"])
    for run in runs:
        start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00")).astimezone(berlin)
        assert (start.hour, start.minute) == (2, 0), run["expected_start_time"]
        assert run["parameters"] == {"catalog": "catalogs/scenes/demo.yaml"}
    batch = deployed.get("/deployments/name/segment-volumes/batch")
    assert _scheduled_runs(deployed, batch["id"]) == []  # on demand only


def test_both_deployments_run_one_at_a_time_and_enqueue_the_next(deployed):
    """deploy/prefect.yaml's concurrency_limit {limit: 1, collision_strategy: ENQUEUE} reaches the server
    (read back through the Prefect client)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: deployed.api}), get_client(sync_client=True) as client:
        for name in ("landcover/nightly", "segment-volumes/batch"):
            deployment = client.read_deployment_by_name(name)
            assert deployment.global_concurrency_limit is not None, name
            assert deployment.global_concurrency_limit.limit == 1, name
            assert deployment.concurrency_options is not None, name
            assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE", name
