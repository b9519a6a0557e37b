"""SIGTERM handled as Ctrl-C is, for the ``segpipe`` command line.

Prefect (cancelling a flow run from a process worker), Kubernetes (evicting a pod) and systemd
(stopping a service) stop a process with SIGTERM, whose default action ends Python at once: no
``finally`` block runs, so a run's temporary outputs (``<name>.tmp-<8 hex>``, a study's
``.tmp-<pid>-<name>``, an ingest's ``<stem>.zarr.tmp-<8 hex>``), its Dask client and its work lock
were left behind. :func:`sigterm_as_interrupt` turns SIGTERM into :class:`Terminated`, a
:class:`KeyboardInterrupt` raised in the main thread, so everything that cleans up after Ctrl-C
cleans up after SIGTERM too; the command line then says so and exits with 143 (128 + 15, the status
of a process ended by SIGTERM).

Installed by :func:`pipeline.cli.main` only: library code never touches signal handlers (nothing
here runs on import), and a Prefect flow run keeps Prefect's own SIGTERM handler
(``prefect.utilities.engine.capture_sigterm``: ``TerminationSignal`` in the flow's main thread), which
ends a run cancelled from the Prefect API as Cancelled. The flows' scenes and studies run on
task-runner threads, which no signal interrupts: the flows pass the stop on with
:func:`pipeline.stop.request_stop`, and the work in flight raises :class:`pipeline.stop.Stopped` at
its next check (between window batches, blocks and tiles; ``tests/deploy/test_prefect_cancel.py``).
The handler here requests the stop too, for the command line's own threads. Python runs a signal
handler between bytecodes of the main thread: a long call into C (a GDAL read, a model's forward
pass) finishes before the cleanup starts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from pipeline.stop import request_stop

__all__ = ["EXIT_STATUS", "MESSAGE", "Terminated", "sigterm_as_interrupt"]

EXIT_STATUS = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM
MESSAGE = "stopped by SIGTERM; run the same command again to resume"


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM (raised in the main thread by :func:`sigterm_as_interrupt`)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread; the previous handler is put back on exit.

    Further SIGTERMs are ignored once the first arrived, so they do not interrupt the cleanup it
    started (a supervisor's SIGKILL after its grace period still ends the process). Outside the
    main thread (where Python cannot set handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        request_stop("SIGTERM")  # the run's other threads (readers, writers) stop at their next check
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
