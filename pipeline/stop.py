"""A stop request that reaches the work in flight: the engine, the ingest and the COG writer check it
between blocks, window batches and tiles.

Why: a signal reaches the main thread only. A ``segpipe`` command runs its engine there, but a flow
run's scenes and studies run on Prefect's task-runner threads, and Prefect's ``capture_sigterm``
raises ``TerminationSignal`` in the flow's main thread only; the run ended Cancelled once the
scenes in flight had finished (10-30 s in tests, minutes on a gigapixel scene). Now whoever learns
that the run must stop calls :func:`request_stop` (the command line's SIGTERM handler,
:mod:`pipeline.termination`; the flows when ``TerminationSignal`` or Ctrl-C reaches their main
thread, :func:`flows._runtime.submit_bounded`), and the next :func:`check_stop` on any thread of the
process raises :class:`Stopped`, a :class:`KeyboardInterrupt`: the cleanup that runs after Ctrl-C
runs (temporaries removed, locks released, finished blocks kept for a resume).

Dask: a worker is another process, where this process's request does not reach. A task running
on a Dask worker checks instead whether its own key is still wanted: once its client cancelled it
(``run_engine_dask`` cancels its futures when it is stopped), released it or went away, the
worker's state for the key is ``cancelled`` and :func:`check_stop` raises :class:`TaskCancelled`
(an ``Exception``: Dask ends a worker whose task raises ``KeyboardInterrupt``). A check that
cannot be made (a block's compute task checks between window batches; a finalize task writes one
chunk and does not check) lets the task finish: it writes its whole chunk, which a rerun writes
again with the same bytes.

Cost: an :class:`threading.Event` test, plus on a Dask worker a dictionary look-up; about a
microsecond a check, at most one per batch of windows or per tile (``tests/pipeline/test_stop.py``).
Nothing here runs on import and nothing touches signal handlers.
"""

from __future__ import annotations

import sys
import threading

from pipeline.errors import SegpipeError

__all__ = ["Stopped", "TaskCancelled", "check_stop", "clear_stop", "request_stop", "stop_requested", "wait_for_stop"]

_REQUEST = threading.Event()
_REASON = ["stop requested"]


class Stopped(KeyboardInterrupt):
    """A stop was requested (:func:`request_stop`); raised by :func:`check_stop` on the thread doing the work."""


class TaskCancelled(SegpipeError):
    """The Dask task running this work was cancelled (its client stopped, cancelled it or went away)."""


def request_stop(reason: str = "stop requested") -> None:
    """Ask every thread of this process to stop at its next :func:`check_stop`.

    Args:
        reason: what asked (e.g. ``"SIGTERM"``, ``"flow run cancelled"``), the message of :class:`Stopped`.
    """
    if not _REQUEST.is_set():
        _REASON[0] = reason
        _REQUEST.set()


def clear_stop() -> None:
    """Forget a stop request: called where a new run starts in a process that may have stopped one
    (``segpipe``'s main, the start of a flow run)."""
    _REQUEST.clear()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called (and not cleared) in this process."""
    return _REQUEST.is_set()


def wait_for_stop(seconds: float) -> bool:
    """Sleep up to ``seconds``, waking at once when a stop is requested; whether one was."""
    return _REQUEST.wait(seconds)


def check_stop() -> None:
    """Raise when the work on this thread must stop; else return at once.

    Raises:
        Stopped: a stop was requested in this process (outside a Dask task).
        TaskCancelled: this thread runs a Dask task that was cancelled, or a stop was requested in
            this process while it runs.
    """
    key = _dask_task_key()
    if key is None:
        if _REQUEST.is_set():
            raise Stopped(_REASON[0])
        return
    if _REQUEST.is_set() or _dask_task_cancelled(key):
        raise TaskCancelled(f"Dask task {key!r} was cancelled ({_REASON[0] if _REQUEST.is_set() else 'its client stopped'}); it stops here")


def _dask_task_key() -> object | None:
    """The key of the Dask task this thread runs, or None (not a Dask worker's task thread)."""
    worker = sys.modules.get("distributed.worker")  # never imported here: no Dask, no task
    if worker is None:
        return None
    return getattr(worker.thread_state, "key", None)


def _dask_task_cancelled(key: object) -> bool:
    """Whether the worker running this thread no longer wants ``key`` computed."""
    from distributed.worker import get_worker

    try:
        state = get_worker().state.tasks.get(key)
    except ValueError:  # no worker in this context
        return False
    return state is None or state.state in ("cancelled", "released", "forgotten")
