"""A ``landcover`` run cancelled from the Prefect API while it segments ends as Cancelled, leaves no
temporary output or lock, and the command line then finishes the scene into the same folder with
the outputs of an uninterrupted run.

SIGTERM is how a process worker stops a cancelled run; segpipe's own SIGTERM handler is the command
line's only (``pipeline/termination.py``), so in a flow run Prefect's ``capture_sigterm`` stays in
charge. As measured here, Prefect's cancellation takes effect once the scene task in flight has
finished (it runs on a task-runner thread, which a signal does not interrupt): the run ends
Cancelled with that scene complete. Real ``prefect server`` and process worker
(tests/deploy/conftest.py), the deployments of deploy/prefect.yaml, a slow per-pixel model so the
cancel lands mid-segmentation."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import zarr

from pipeline.cli import main
from tests.deploy.conftest import get_json, prefect_exe
from tests.deploy.test_prefect_server import POOL, _fastapi_compatible, _tail, _wait_final
from tests.raster.test_raster_sigterm import TIME, _outputs, _scene, _spec

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _done_blocks(work) -> int:
    try:
        return int(zarr.open_array(str(work), path="labels_done", mode="r")[...].sum())
    except Exception:  # noqa: BLE001 - the store or array is not there yet
        return 0


def test_a_landcover_run_cancelled_from_the_api_ends_cancelled(tmp_path, real_server_factory):
    _fastapi_compatible()
    scene, spec, out = _scene(tmp_path / "scene.tif"), _spec(tmp_path, pause_s=0.4), tmp_path / "out"
    server = real_server_factory(PREFECT_WORKER_QUERY_SECONDS="2")
    try:
        server.cli("work-pool", "create", POOL, "--type", "process", timeout=180)
        server.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml", timeout=180)
        server.start("worker", [prefect_exe(), "worker", "start", "--pool", POOL, "--name", "segpipe-cancel-worker"])
        params = {"scenes": [str(scene)], "model": str(spec), "out": str(out), "block": 128, "device": "cpu", "time": TIME}
        printed = server.cli("deployment", "run", "landcover/nightly", "--params", json.dumps(params), timeout=180)
        run_id = UUID.findall(printed)[-1]

        deadline = time.monotonic() + 300
        while _done_blocks(out / ".work" / "scene.zarr") < 1:  # segmenting: the model has finished a block
            state = (get_json(f"{server.api}/flow_runs/{run_id}")["state"] or {}).get("type")
            assert state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), f"{state} before it could be cancelled\n{_tail(server)}"
            assert time.monotonic() < deadline, f"no block finished in time\n{_tail(server)}"
            time.sleep(0.2)
        server.get(f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})

        run = _wait_final(server.api, {"landcover": run_id}, 240)["landcover"]
        assert run["state"]["type"] == "CANCELLED", f"{run['state']}\n{_tail(server)}"
    except BaseException:
        print(_tail(server))
        raise
    finally:
        server.stop()

    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.suffix == ".lock"]  # nothing half-written or held

    def cli(model, folder):
        return main(["raster", str(scene), "--model", str(model), "--out", str(folder), "--block", "128", "--device", "cpu", "--time", TIME])

    assert cli(spec, out) == 0  # finishes (or skips) what the cancelled run left
    (tmp_path / "fast").mkdir()
    assert cli(_spec(tmp_path / "fast", pause_s=0.0), tmp_path / "ref") == 0  # the same weights, uninterrupted
    got, want = _outputs(out), _outputs(tmp_path / "ref")
    assert np.array_equal(got.pop("labels"), want.pop("labels")) and got == want
