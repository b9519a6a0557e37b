"""pipeline.dask_client: an unreachable or malformed --dask-address is an InputError naming it and the fix."""

from __future__ import annotations

import time

import dask
import pytest

from pipeline.dask_client import dask_client
from pipeline.errors import InputError


def test_unreachable_scheduler_fails_within_the_timeout():
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"^tcp://127.0.0.1:1: cannot reach the Dask scheduler .*\(check the address, e.g. tcp://scheduler:8786"):
        dask_client("tcp://127.0.0.1:1", timeout="1s")
    assert time.perf_counter() - started < 8
    assert dask.config.get("scheduler", None) is None  # the failed Client left no dask.distributed setting behind


@pytest.mark.parametrize("address", ["no-port", "foo://host:1"])
def test_malformed_address(address):
    with pytest.raises(InputError, match=f"^{address}: not a Dask scheduler address"):
        dask_client(address)
    assert dask.config.get("scheduler", None) is None
