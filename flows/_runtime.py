"""What both flows share: output roots, the I/O retry rule, bounded submission, outcomes, a model cache.

The flows' words and the library's logs in Prefect run logs (:func:`flow_wording`,
:func:`library_logs_to_run`, :func:`with_library_logs`, :func:`run_logger`) live in
:mod:`flows._logs` and are re-exported here.

Nothing here reads configuration at import time; :func:`output_root` reads ``$SEGPIPE_OUT`` when a
flow run starts.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows._logs import LIBRARY_LOGGERS as LIBRARY_LOGGERS
from flows._logs import flow_wording as flow_wording
from flows._logs import library_logs_to_run as library_logs_to_run
from flows._logs import run_logger as run_logger
from flows._logs import with_library_logs as with_library_logs
from pipeline.errors import SegpipeError
from pipeline.urls import public_url

log = logging.getLogger(__name__)

OUT_ENV = "SEGPIPE_OUT"
"""Environment variable naming the output root of flow runs (one sub-folder per flow)."""
DEFAULT_OUT = Path("segpipe-demo")
"""Output root when neither a parameter, a catalog nor ``$SEGPIPE_OUT`` names one (relative to the working directory)."""
REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_TAG = "segpipe-gpu"
"""Tag of every model-running task: ``prefect concurrency-limit create segpipe-gpu 1`` runs one at a time across all runs."""
# OSErrors that retrying cannot fix: the file is not there or not ours to read
_PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class AllItemsFailedError(SegpipeError):
    """Every scene or study of a flow run failed; the failures table artifact lists why."""


@dataclass(frozen=True)
class Failure:
    """One scene or study that could not be processed.

    Attributes:
        item: the input path or URL as given (a URL without its credentials: :func:`pipeline.urls.public_url`).
        error: the exception type (``InputError``, ``RasterioIOError``, ...).
        message: the message, naming the file, the problem and the fix (URLs in it without credentials).
    """

    item: str
    error: str
    message: str

    def __post_init__(self) -> None:  # failures reach logs and artifacts: no signed URL's secret goes with them
        object.__setattr__(self, "item", public_url(self.item))
        object.__setattr__(self, "message", public_url(self.message))


PARTIAL_STATE_NAME = "Completed with failures"


def finished(report: Any, *, done: int, failed: int, what: str, artifact: str) -> Any:
    """What a batch flow returns: ``report`` itself when nothing failed; else a COMPLETED state named
    :data:`PARTIAL_STATE_NAME` carrying ``report``. The type stays COMPLETED (the other items are
    done, and callers still get the report), but the name shows in the UI and in the run's events
    (``prefect.flow-run.Completed with failures``), so an automation can alert on a night that lost
    items. (All items failed: the flows raise :class:`AllItemsFailedError` instead.)"""
    if not failed:
        return report
    from prefect.states import Completed

    message = f"{failed} of {done + failed} {what} failed; see the {artifact} artifact"
    return Completed(name=PARTIAL_STATE_NAME, message=message, data=report)


def output_root(out: str | os.PathLike | None, catalog_output: Path | None, flow: str) -> Path:
    """The folder a flow run writes to.

    Precedence: the ``out`` parameter, the catalog's ``output``, ``$SEGPIPE_OUT/<flow>``, then
    ``./segpipe-demo/<flow>`` (relative to the working directory). Returned absolute, so tasks on
    other threads, processes or Dask workers agree on it.
    """
    if out:
        root = Path(out)
    elif catalog_output is not None:
        root = catalog_output
    elif os.environ.get(OUT_ENV):
        root = Path(os.environ[OUT_ENV]) / flow
    else:
        root = DEFAULT_OUT / flow
    return root.expanduser().resolve()


def is_io_error(exc: BaseException | None) -> bool:
    """True for transient I/O failures worth retrying.

    An :class:`OSError` (``rasterio.errors.RasterioIOError``, connection resets, timeouts, a busy
    file system) is transient unless it says the file is missing or forbidden. A
    :class:`~pipeline.errors.SegpipeError` (``InputError`` and friends: bad input, bad model spec)
    is not: the same input fails the same way again; unless it is marked ``transient`` (a remote
    scene whose server failed or could not be reached).
    """
    if exc is None:
        return False
    if isinstance(exc, SegpipeError):
        return bool(getattr(exc, "transient", False))
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only when it raised an I/O error."""
    exc = state.result(raise_on_failure=False)
    retry = is_io_error(exc if isinstance(exc, BaseException) else None)
    if retry:
        log.warning("%s: I/O error, retrying: %s", task_run.name, exc)
    return retry


def item_task(name: str) -> Callable[[Callable[..., Any]], Any]:
    """The Prefect ``@task`` decorator of a flow's per-item task (one scene, one study): run name
    ``segment-<name>``, the :data:`GPU_TAG`, two retries (after 10 s, then 60 s) on I/O errors only
    (:func:`retry_on_io_error`), no result caching or persistence (tasks return paths, the outputs
    are the files)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(
        name=name,
        task_run_name="segment-{name}",
        tags=[GPU_TAG],
        retries=2,
        retry_delay_seconds=[10, 60],
        retry_condition_fn=retry_on_io_error,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def failure_of(item: str, exc: BaseException | None, state_message: str | None = None) -> Failure:
    """A :class:`Failure` record from a task run's exception (or its state message when there is none);
    the message names flow parameters where the library's names command-line options (:func:`flow_wording`)."""
    if exc is None:
        return Failure(item=item, error="Failed", message=flow_wording(state_message or "task run failed without an exception"))
    return Failure(item=item, error=type(exc).__name__, message=flow_wording(str(exc) or repr(exc)))


def failures_table(failures: Sequence[Failure]) -> list[dict[str, str]]:
    """Rows for a Prefect table artifact: one per failure, columns ``item``, ``error``, ``message``."""
    return [{"item": f.item, "error": f.error, "message": f.message} for f in failures]


def distinct_names(items: Sequence[str], name_of: Any) -> tuple[list[tuple[str, str]], list[Failure]]:
    """``(name, item)`` pairs with distinct output names; a repeated name becomes a :class:`Failure`
    (its outputs would overwrite those of the first item with that name)."""
    seen: dict[str, str] = {}
    todo: list[tuple[str, str]] = []
    failures: list[Failure] = []
    for item in items:
        name = name_of(item)
        if name in seen:
            message = f"{item}: same output name '{name}' as {seen[name]} (rename one of them or run them into different out folders)"
            failures.append(Failure(item, "InputError", message))
            continue
        seen[name] = item
        todo.append((name, item))
    return todo, failures


def in_flight(max_parallel: int | None, dask_address: str | None, local_default: int) -> int | None:
    """How many tasks to keep in flight: ``max_parallel`` when given (at least 1); otherwise
    ``local_default`` on this machine and no bound on a Dask cluster (its workers are the bound)."""
    if max_parallel is not None:
        return max(1, int(max_parallel))
    return None if dask_address else local_default


def submit_bounded(task: Any, calls: Sequence[dict[str, Any]], *, limit: int | None = None, runner: Any = None) -> list[Any]:
    """Submit ``task`` once per parameter dict, with at most ``limit`` runs in flight, and wait for all.

    Args:
        task: a Prefect task.
        calls: keyword parameters of each run, in order.
        limit: runs in flight at once (a sliding window: a new run starts when one finishes);
            None or 0 = no bound beyond the task runner's own.
        runner: an entered Prefect task runner (e.g. a ``DaskTaskRunner``); None = the flow's.

    Returns:
        The futures, in the order of ``calls``, all finished.

    A ``TerminationSignal`` (the run cancelled) or Ctrl-C while it waits stops the items in flight
    too (:func:`stop_work_in_flight`) before it is raised on.
    """
    from prefect.futures import as_completed, wait

    from pipeline.stop import clear_stop

    clear_stop()  # a stop requested in this process before (an earlier run, in-process) is not this batch's
    futures: list[Any] = []
    running: list[Any] = []
    try:
        for params in calls:
            if limit and len(running) >= limit:
                finished = next(as_completed(running))
                running.remove(finished)
            future = runner.submit(task, params) if runner is not None else task.submit(**params)
            futures.append(future)
            running.append(future)
        wait(futures)
    except BaseException as exc:  # TerminationSignal (a cancelled run), Ctrl-C: only this thread hears it
        stop_work_in_flight(exc, futures)
        raise
    return futures


def stop_work_in_flight(exc: BaseException, futures: Sequence[Any]) -> None:
    """Pass a stop that reached the flow's main thread on to the items in flight.

    Prefect cancels a flow run by SIGTERM, which its ``capture_sigterm`` turns into
    ``TerminationSignal`` in the flow's main thread; the scenes and studies run on task-runner
    threads (or Dask workers), which no signal reaches, and Prefect's task runner waits for them
    before the run ends Cancelled. :func:`pipeline.stop.request_stop` makes the threads' work stop
    at its next block, window batch or tile (raising :class:`pipeline.stop.Stopped`, whose cleanup
    is Ctrl-C's); the futures not started yet are cancelled, and on a Dask task runner the tasks
    are cancelled on the cluster (a running one stops at its next check: its key is no longer wanted).
    """
    from prefect.exceptions import TerminationSignal

    from pipeline.stop import request_stop

    if not isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
        return
    request_stop("flow run cancelled" if isinstance(exc, TerminationSignal) else "interrupted")
    log.info("stopping %d task(s) in flight: %s", len(futures), type(exc).__name__)
    for future in futures:
        _cancel(future)


def _cancel(future: Any) -> None:
    """Cancel a Prefect future's underlying future (a thread pool's or a Dask one) where it has one."""
    wrapped = getattr(future, "wrapped_future", None)
    cancel = getattr(wrapped, "cancel", None)
    if cancel is None:
        return
    try:
        cancel()
    except Exception as exc:  # noqa: BLE001 - stopping: a future that cannot be cancelled finishes on its own
        log.debug("could not cancel %r: %s", future, exc)


def outcome(future: Any) -> tuple[Any, BaseException | None, str | None]:
    """``(result, exception, state message)`` of a finished future: the result when it completed, else the exception."""
    state = future.state
    if state.is_completed():
        return future.result(), None, None
    exc = state.result(raise_on_failure=False)
    return None, exc if isinstance(exc, BaseException) else None, state.message


def collect(todo: Sequence[tuple[str, str]], futures: Sequence[Any], noun: str, logger: Any) -> tuple[list[Any], list[Failure]]:
    """The results of the finished ``futures`` (one per ``(name, item)`` of ``todo``) and a
    :class:`Failure` for each that failed, logged as ``"<noun> <name> failed: ..."``."""
    outputs: list[Any] = []
    failures: list[Failure] = []
    for (name, item), future in zip(todo, futures):
        result, exc, message = outcome(future)
        if result is not None:
            outputs.append(result)
        else:
            failures.append(failure_of(item, exc, message))
            logger.warning("%s %s failed: %s", noun, name, failures[-1].message)
    return outputs, failures


def dask_runner(address: str | None) -> Any:
    """A ``DaskTaskRunner`` on the scheduler at ``address`` (a context manager), or a no-op context when None."""
    if not address:
        return nullcontext(None)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a dependency
        raise SegpipeError(f"dask_address={address!r} needs prefect-dask (pip install prefect-dask)") from exc
    return DaskTaskRunner(address=address)


_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
_MODELS_KEPT = 2  # a long-lived Dask worker keeps at most this many networks in memory


def cached_model(spec: Any, device: str) -> Any:
    """The network of ``spec`` on ``device``, loaded once per process (threads and Dask workers reuse it).

    Keyed by the spec's source file (or name), its checkpoint's modification time and the device;
    the oldest network is dropped when more than two are held.
    """
    checkpoint = spec.checkpoint
    stamp = checkpoint.stat().st_mtime_ns if checkpoint is not None and Path(checkpoint).exists() else 0
    key = (f"{spec.source or spec.name}@{stamp}", device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from models.checkpoint import load_model
            from pipeline.engine import auto_device

            while len(_MODELS) >= _MODELS_KEPT:
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = load_model(spec, auto_device(device))
        return _MODELS[key]


def require_checkpoint(spec_path: str) -> None:
    """Refuse a model whose checkpoint file is missing once, before any scene or study runs.

    Raises:
        CheckpointError: the spec at ``spec_path`` names a checkpoint that is not there.
    """
    from models.checkpoint import require_checkpoint as require
    from models.spec import load_spec

    require(load_spec(spec_path))


def markdown_cell(text: str) -> str:
    """Text safe inside one markdown table cell (a failure's message in a run summary): ``|`` escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")
