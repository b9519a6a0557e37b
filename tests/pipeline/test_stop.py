"""A stop request (``pipeline/stop.py``) reaches the work in flight: the engine raises
:class:`Stopped` between window batches and blocks, keeps the finished blocks for a resume whose
labels equal an uninterrupted run's; without a request nothing changes. On a Dask cluster (a real
``LocalCluster`` with worker processes) a stopped run cancels its tasks: the scheduler holds none of
them shortly after, and a rerun gives the same labels."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import zarr

from pipeline.distributed import ZarrRef, run_engine_dask
from pipeline.engine import EngineConfig, run_engine
from pipeline.stop import Stopped, TaskCancelled, check_stop, clear_stop, request_stop, stop_requested
from tests.raster.sigterm_models import SlowPerPixel

CFG = EngineConfig(window=(32, 32), overlap=0.25, block=(64, 64), batch_size=2, device="cpu", class_ids=(0, 1, 5))
SHAPE = (3, 200, 190)


@pytest.fixture(autouse=True)
def no_stop_left():
    clear_stop()
    yield
    clear_stop()


def slow_model(pause_s: float = 0.0) -> torch.nn.Module:
    """The brightest band's class, ``pause_s`` seconds per batch (built the same in every process)."""
    model = SlowPerPixel(channels=3, pause_s=pause_s)
    with torch.no_grad():
        model.conv.weight.copy_(torch.eye(3)[:, :, None, None])
        model.conv.bias.copy_(torch.tensor([0.5, 0.25, 0.0]))
    return model.eval()


def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 200, size=SHAPE).astype(np.float32)


def _arrays(store):
    root = zarr.open_group(str(store), mode="w")
    root.create_array("image", shape=SHAPE, chunks=(3, 64, 64), dtype="float32")[...] = image()
    root.create_array("labels", shape=SHAPE[1:], chunks=(64, 64), dtype="uint8")
    root.create_array("done", shape=(4, 3), chunks=(1, 1), dtype="uint8", fill_value=0)
    return root


def reference() -> np.ndarray:
    out = zarr.create_array(store={}, shape=SHAPE[1:], chunks=(64, 64), dtype="uint8")
    run_engine(image(), slow_model(), CFG, out)
    return out[...]


def test_check_stop_raises_only_after_a_request():
    check_stop()  # nothing requested: returns
    assert not stop_requested()
    request_stop("SIGTERM")
    assert stop_requested()
    with pytest.raises(Stopped, match="SIGTERM") as caught:
        check_stop()
    assert isinstance(caught.value, KeyboardInterrupt)  # Ctrl-C's cleanup runs
    clear_stop()
    check_stop()


def test_a_check_costs_about_a_microsecond():
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        check_stop()
    per_check = (time.perf_counter() - t0) / n
    print(f"check_stop: {per_check * 1e9:.0f} ns a call")
    assert per_check < 5e-6  # one per batch of windows (a model call: milliseconds) or per tile


def test_a_stop_requested_mid_run_stops_the_engine_and_the_resume_equals_an_uninterrupted_run(tmp_path):
    want = reference()
    root = _arrays(tmp_path / "run.zarr")
    calls = []

    class StopAfter(torch.nn.Module):  # asks for the stop from inside the 15th model call (of ~60)
        def __init__(self):
            super().__init__()
            self.inner = slow_model()

        def forward(self, x):
            calls.append(1)
            if len(calls) == 15:
                threading.Thread(target=request_stop, args=("test",)).start()  # from another thread, as a flow does
                time.sleep(0.1)
            return self.inner(x)

    with pytest.raises(Stopped):
        run_engine(root["image"], StopAfter(), CFG, root["labels"], done=root["done"])
    finished = int(root["done"][...].sum())
    assert 0 < finished < 12 and len(calls) <= 16  # stopped at the next batch, finished blocks kept

    clear_stop()
    report = run_engine(root["image"], slow_model(), CFG, root["labels"], done=root["done"])
    assert report.blocks_skipped == finished
    assert np.array_equal(root["labels"][...], want)


def test_without_a_request_the_labels_are_bit_identical(tmp_path):
    root = _arrays(tmp_path / "run.zarr")
    run_engine(root["image"], slow_model(), CFG, root["labels"], done=root["done"])
    assert np.array_equal(root["labels"][...], reference()) and root["done"][...].all()


def _segpipe_tasks(dask_scheduler) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("segpipe-")]


@pytest.mark.slow
def test_a_stopped_dask_run_leaves_no_task_on_the_cluster_and_the_rerun_is_identical(tmp_path):
    distributed = pytest.importorskip("distributed")
    import functools

    want = reference()
    store = tmp_path / "run.zarr"
    root = _arrays(store)
    args = (ZarrRef(str(store), "image"), "slow", functools.partial(slow_model, 0.3), CFG, ZarrRef(str(store), "labels"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        raised: list[BaseException] = []

        def run():
            try:
                run_engine_dask(client, *args, done=ZarrRef(str(store), "done"))
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                raised.append(exc)

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 120
        while int(root["done"][...].sum()) < 1:
            assert time.monotonic() < deadline and runner.is_alive(), raised
            time.sleep(0.05)
        assert client.run_on_scheduler(_segpipe_tasks)  # blocks queued and running
        stopped = time.monotonic()
        request_stop("test")
        runner.join(30)
        assert not runner.is_alive() and len(raised) == 1 and isinstance(raised[0], Stopped)
        left = client.run_on_scheduler(_segpipe_tasks)
        while left and time.monotonic() - stopped < 10:
            time.sleep(0.1)
            left = client.run_on_scheduler(_segpipe_tasks)
        print(f"dask: run stopped after {time.monotonic() - stopped:.2f} s, tasks left {left}")
        assert left == []
        assert int(root["done"][...].sum()) < 12
        processing = client.processing()
        assert all(not keys for keys in processing.values()), processing  # the workers are free

        clear_stop()
        run_engine_dask(client, *args, done=ZarrRef(str(store), "done"))
    assert np.array_equal(zarr.open_array(str(store), path="labels")[...], want)


def test_a_cancelled_dask_task_gets_task_cancelled_not_a_keyboard_interrupt():
    """On a Dask worker a KeyboardInterrupt would end the worker (distributed's fail_hard): a task
    whose key was cancelled gets TaskCancelled, an Exception."""
    assert issubclass(TaskCancelled, Exception) and not issubclass(TaskCancelled, KeyboardInterrupt)


def test_the_flows_pass_a_termination_signal_on_and_nothing_else():
    """``submit_bounded`` hands what reached the flow's main thread to stop_work_in_flight: Prefect's
    TerminationSignal (a cancelled run) and Ctrl-C stop the work in flight; an error does not."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.exceptions import TerminationSignal

    from flows._runtime import stop_work_in_flight

    class Queued:  # a Prefect future's wrapped future, not started yet
        def __init__(self, pool):
            self.wrapped_future = pool.submit(time.sleep, 0)

    stop_work_in_flight(ValueError("a scene failed"), [])
    assert not stop_requested()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(time.sleep, 0.5)  # keeps the one thread busy: the next future stays queued
        queued = Queued(pool)
        stop_work_in_flight(TerminationSignal(15), [queued])
        assert stop_requested() and queued.wrapped_future.cancelled()
    with pytest.raises(Stopped, match="flow run cancelled"):
        check_stop()
