"""A ``landcover`` run cancelled from the Prefect API while it segments ends as Cancelled within a
few seconds, leaves no temporary output or lock, and the command line then finishes the scene into
the same folder with the outputs of an uninterrupted run.

SIGTERM is how a process worker stops a cancelled run; in a flow run Prefect's ``capture_sigterm``
raises ``TerminationSignal`` in the flow's main thread, while the scene runs on a task-runner
thread. Before: the run ended Cancelled only once the scene in flight had finished (10-30 s here).
Now the flow passes the stop on (``flows/_runtime.py`` submit_bounded, ``pipeline/stop.py``) and
the scene stops at its next batch of windows: the bound below holds for a model whose scene takes
30 s and more. Real ``prefect server`` and process worker (tests/deploy/conftest.py), the
deployments of deploy/prefect.yaml, a slow per-pixel model so the cancel lands mid-segmentation."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import zarr

from pipeline.cli import main
from tests.deploy.conftest import get_json, prefect_exe
from tests.deploy.test_prefect_server import POOL, _fastapi_compatible, _tail
from tests.raster.test_raster_sigterm import TIME, _outputs, _scene, _spec

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]

PAUSE_S = 1.0  # per batch of windows: about 30 s a scene (9 blocks of 128 px, 64 px windows)
CANCELLED_WITHIN_S = 12.0  # the worker's poll (2 s), a batch in flight (1 s), the cleanup, Prefect's state changes

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _done_blocks(work) -> int:
    try:
        return int(zarr.open_array(str(work), path="labels_done", mode="r")[...].sum())
    except Exception:  # noqa: BLE001 - the store or array is not there yet
        return 0


def test_a_landcover_run_cancelled_from_the_api_ends_cancelled(tmp_path, real_server_factory):
    _fastapi_compatible()
    scene, spec, out = _scene(tmp_path / "scene.tif"), _spec(tmp_path, pause_s=PAUSE_S), tmp_path / "out"
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
        cancelled = time.monotonic()
        while (state := (get_json(f"{server.api}/flow_runs/{run_id}")["state"] or {}).get("type")) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert time.monotonic() - cancelled < 240, f"{state} 240 s after the cancel\n{_tail(server)}"
            time.sleep(0.1)
        took = time.monotonic() - cancelled
        print(f"cancel -> {state} in {took:.1f} s; blocks done {_done_blocks(out / '.work' / 'scene.zarr')} of 9")
        assert state == "CANCELLED", f"{state}\n{_tail(server)}"
        assert took < CANCELLED_WITHIN_S, f"Cancelled {took:.1f} s after the cancel request\n{_tail(server)}"
        assert not (out / "scene.labels.tif").exists()  # the scene did not run to its end
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
