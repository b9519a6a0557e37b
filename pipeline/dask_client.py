"""Connect to the Dask scheduler of ``--dask-address`` (``segpipe raster`` and ``segpipe volume``)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import InputError

CONNECT_TIMEOUT = "10s"
_UNSET = object()


def dask_client(address: str, *, timeout: str = CONNECT_TIMEOUT) -> Any:
    """A ``distributed.Client`` connected to ``address``; an unreachable or malformed address is an :class:`InputError`.

    Args:
        address: the scheduler, e.g. ``tcp://scheduler:8786``.
        timeout: how long to try connecting (a Dask duration, e.g. ``"10s"``).
    """
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise InputError(address, "--dask-address needs the 'distributed' package", "pip install 'dask[distributed]'") from exc
    import dask

    _check_address(address)
    scheduler = dask.config.config.get("scheduler", _UNSET)
    try:
        return Client(address, timeout=timeout)
    except ValueError as exc:
        _forget_failed_client(scheduler)
        raise InputError(address, f"not a Dask scheduler address ({exc})", "give --dask-address like tcp://scheduler:8786") from exc
    except (OSError, TimeoutError) as exc:
        _forget_failed_client(scheduler)
        raise InputError(address, f"cannot reach the Dask scheduler ({exc})", "check the address, e.g. tcp://scheduler:8786, and that the scheduler is running") from exc


def _check_address(address: str) -> None:
    """Refuse a malformed address (unknown scheme, no port) without making a Client (no DNS lookup)."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)
    except ValueError as exc:
        raise InputError(address, f"not a Dask scheduler address ({exc})", "give --dask-address like tcp://scheduler:8786") from exc


def _forget_failed_client(scheduler: Any) -> None:
    """Finalise the Client that failed to connect now, and undo the setting it left behind.

    Its ``__del__`` closes its event-loop runner; left to a later garbage collection, that can run
    inside the next Client's start and deadlock on the runner's lock (seen in the test suite).
    """
    import gc

    gc.collect()
    _restore_scheduler(scheduler)


def _restore_scheduler(scheduler: Any) -> None:
    """Undo the ``scheduler: dask.distributed`` setting a Client that failed to connect leaves behind.

    Left in place, every later dask computation in this process fails with "Requested
    dask.distributed scheduler but no Client active".
    """
    import dask

    if scheduler is _UNSET:
        dask.config.config.pop("scheduler", None)
    else:
        dask.config.config["scheduler"] = scheduler
