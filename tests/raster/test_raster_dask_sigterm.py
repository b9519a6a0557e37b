"""``segpipe raster --dask-address`` stopped mid-segmentation leaves nothing running on the cluster:
the scheduler holds none of its block tasks shortly after, and no worker is still running one (a
compute task already running stops at its next batch of windows: its key is cancelled,
``pipeline/stop.py``); with SIGTERM it exits 143 with nothing temporary in ``--out``. A rerun on the
same cluster ends with the outputs of an uninterrupted run. Killed outright (SIGKILL), the client
cannot cancel anything: the scheduler drops the tasks of a client whose connection closed, and the
running ones stop the same way.

Before: the blocks already running on the workers ran to their end (every batch of windows) after
the run had stopped ("orphan tasks"). Real ``LocalCluster`` with worker processes, a real
``segpipe`` process and signal."""

from __future__ import annotations

import signal
import time

import pytest

from pipeline.cli import main
from tests.raster.test_raster_sigterm import _args, _child, _done_blocks, _outputs, _same, _spec, _stopped_cleanly
from tests.raster.test_raster_sigterm import reference as reference  # the fixture: scene, fast model, uninterrupted outputs

pytestmark = pytest.mark.slow
PAUSE_S = 0.8  # per batch of windows; a 256 px block is ~9 batches: ~7 s
IDLE_WITHIN_S = 2.0  # a batch in flight and the cancel; the rest of the block would be ~5 s more (measured 2.6-3.5 s at 0.5 s a batch)


def _segpipe_tasks(dask_scheduler) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("segpipe-")]


def _running(dask_worker) -> list[str]:
    return [str(k) for k, ts in dask_worker.state.tasks.items() if str(k).startswith("segpipe-") and ts.state in ("executing", "cancelled", "resumed")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_run_leaves_nothing_on_the_cluster_and_the_rerun_is_identical(reference, tmp_path, sig):
    distributed = pytest.importorskip("distributed")
    scene, fast, _ = reference
    assert main([*_args(scene, fast, tmp_path / "ref"), "--block", "256"]) == 0  # uninterrupted, the same block
    expected = _outputs(tmp_path / "ref")
    spec = _spec(tmp_path, pause_s=PAUSE_S)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        args = [*_args(scene, spec, out), "--block", "256", "--dask-address", cluster.scheduler_address]
        proc = _child("-", "never", args)
        work, deadline = out / ".work" / "scene.zarr", time.monotonic() + 180
        while not any(client.run(_running).values()):  # the workers run the first blocks' windows
            assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no block started in time"
            time.sleep(0.05)
        time.sleep(2 * PAUSE_S)  # mid-block: two batches of ~9 run
        assert client.run_on_scheduler(_segpipe_tasks)  # the run's blocks are on the cluster
        proc.send_signal(sig)
        if sig == signal.SIGTERM:
            _stopped_cleanly(proc, out)
        else:
            proc.communicate(timeout=60)
        stopped = time.monotonic()

        def left() -> tuple[list[str], dict]:
            return client.run_on_scheduler(_segpipe_tasks), {w: r for w, r in client.run(_running).items() if r}

        state = left()
        while state != ([], {}) and time.monotonic() - stopped < 30:
            time.sleep(0.05)
            state = left()
        idle = time.monotonic() - stopped
        print(f"{sig.name}: cluster free of the run's tasks {idle:.2f} s after it exited: {state}")
        assert state == ([], {})
        assert idle < IDLE_WITHIN_S
        assert _done_blocks(work) < 4  # stopped mid-run

        assert main(args) == 0  # resumes on the same cluster
    assert _same(_outputs(out), expected)
