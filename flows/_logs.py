"""The library's log records in the Prefect run's logs, in the flows' words.

:func:`flow_wording` turns the command-line options that library messages name into the flows'
parameters (``--regions`` -> ``regions=``); :func:`library_logs_to_run` (and the
:func:`with_library_logs` task decorator) forward the ``pipeline``, ``models`` and ``flows``
loggers to the current run while a task runs; :func:`run_logger` is the run's logger inside a run.
Prefect is imported lazily. Re-exported by :mod:`flows._runtime`.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

LIBRARY_LOGGERS = ("pipeline", "models", "flows")
"""Loggers of the library whose records go to the Prefect run's logs (as ``PREFECT_LOGGING_EXTRA_LOGGERS``)."""

_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: (\d[\w.,:]*|FILE|DIR|N|UID|NAME)\b)?")
_PLACEHOLDERS = ("FILE", "DIR", "N", "UID", "NAME")


def flow_wording(message: str) -> str:
    """``message`` with the command-line options the library names turned into the flows' parameters
    (same names, ``_`` for ``-``): ``--regions`` -> ``regions=``, ``--bands 4,3,2`` -> ``bands=[4,3,2]``,
    ``--force`` -> ``force=True``, ``--volume-index 1`` -> ``volume_index=1``,
    ``--region-layer NAME`` -> ``region_layer=<name>``."""

    def parameter(match: re.Match) -> str:
        name, value = match.group(1).replace("-", "_"), match.group(2)
        if value is None:
            return "force=True" if name == "force" else f"{name}="
        if value in _PLACEHOLDERS:
            return f"{name}=<{value.lower()}>"
        return f"{name}=[{value}]" if name == "bands" else f"{name}={value}"

    return _FLAG.sub(parameter, message)


_LOGS_LOCK = threading.Lock()
_LOGS_ACTIVE = 0
_LOGS_SAVED: list[tuple[logging.Logger, int, logging.Handler | None]] = []


def _in_run_context(record: logging.LogRecord) -> bool:
    """Keep a record only inside a Prefect flow or task run (elsewhere the API handler would warn)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return bool(getattr(record, "flow_run_id", None) or TaskRunContext.get() or FlowRunContext.get())


def _flow_wording_handler_class() -> type:
    from prefect.logging.handlers import APILogHandler

    class FlowWordingHandler(APILogHandler):
        """Prefect's API log handler sending the library's records in the flows' words
        (:func:`flow_wording`: ``--regions`` -> ``regions=``); other handlers keep the record as it is."""

        def emit(self, record: logging.LogRecord) -> None:
            reworded = copy.copy(record)
            reworded.msg, reworded.args = flow_wording(record.getMessage()), None
            super().emit(reworded)

    return FlowWordingHandler


def _flow_wording_handler() -> logging.Handler:
    """A new :class:`FlowWordingHandler` (the class is made on first use: Prefect is imported lazily)."""
    global _HANDLER_CLASS
    if _HANDLER_CLASS is None:
        _HANDLER_CLASS = _flow_wording_handler_class()
    return _HANDLER_CLASS()


_HANDLER_CLASS: type | None = None


@contextmanager
def library_logs_to_run(level: int = logging.INFO) -> Iterator[None]:
    """Send the library's log records (:data:`LIBRARY_LOGGERS`, ``level`` and above) to the current
    Prefect run's logs while the block runs (``prefect flow-run logs``, the UI).

    Prefect only forwards its own loggers; ``PREFECT_LOGGING_EXTRA_LOGGERS`` adds others but must be
    set before Prefect starts and keeps them at the root's WARNING level. This attaches Prefect's API
    log handler (unless one is attached already) and lowers the loggers' level to ``level`` while at
    least one task of this process is inside the block (threads share it), then restores both.
    """
    global _LOGS_ACTIVE
    from prefect.logging.handlers import APILogHandler

    with _LOGS_LOCK:
        if _LOGS_ACTIVE == 0:
            for name in LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                handler = None
                if not any(isinstance(h, APILogHandler) for h in logger.handlers):
                    handler = _flow_wording_handler()
                    handler.addFilter(_in_run_context)
                    logger.addHandler(handler)
                _LOGS_SAVED.append((logger, logger.level, handler))
                if logger.level == logging.NOTSET or logger.level > level:
                    logger.setLevel(level)
        _LOGS_ACTIVE += 1
    try:
        yield
    finally:
        with _LOGS_LOCK:
            _LOGS_ACTIVE -= 1
            if _LOGS_ACTIVE == 0:
                while _LOGS_SAVED:
                    logger, old_level, handler = _LOGS_SAVED.pop()
                    logger.setLevel(old_level)
                    if handler is not None:
                        logger.removeHandler(handler)


def with_library_logs(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator (under ``@task``): the task body runs inside :func:`library_logs_to_run`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with library_logs_to_run():
            return function(*args, **kwargs)

    return wrapper


def run_logger(name: str) -> Any:
    """The Prefect run logger inside a flow or task run (its records reach the run's logs), else ``logging.getLogger(name)``."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() or TaskRunContext.get():
        from prefect import get_run_logger

        return get_run_logger()
    return logging.getLogger(name)
