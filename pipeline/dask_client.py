"""Connect to the Dask scheduler of ``--dask-address`` (``segpipe raster`` and ``segpipe volume``)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import InputError

CONNECT_TIMEOUT = "10s"


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
    try:
        return Client(address, timeout=timeout)
    except ValueError as exc:
        raise InputError(address, f"not a Dask scheduler address ({exc})", "give --dask-address like tcp://scheduler:8786") from exc
    except (OSError, TimeoutError) as exc:
        raise InputError(address, f"cannot reach the Dask scheduler ({exc})", "check the address, e.g. tcp://scheduler:8786, and that the scheduler is running") from exc
