"""Region reads through the chunk cache equal direct reads and decode each chunk about once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from pipeline.chunk_cache import ChunkCache
from pipeline.engine import EngineConfig, plan_for, region_of


@pytest.fixture()
def source():
    data = np.random.default_rng(5).integers(0, 255, size=(3, 300, 410), dtype=np.uint8)
    array = zarr.create_array(store={}, shape=data.shape, chunks=(3, 64, 64), dtype="uint8")
    array[...] = data
    return data, array


@pytest.mark.parametrize("box", [(0, 300, 0, 410), (10, 75, 63, 65), (64, 128, 128, 192), (250, 300, 400, 410), (0, 1, 0, 1)])
def test_reads_equal_direct_reads(source, box):
    data, array = source
    r0, r1, c0, c1 = box
    cache = ChunkCache(array, capacity=2)
    np.testing.assert_array_equal(cache[:, r0:r1, c0:c1], data[:, r0:r1, c0:c1])
    np.testing.assert_array_equal(cache[:, r0:r1, c0:c1], data[:, r0:r1, c0:c1])  # from the cache now


def test_engine_order_decodes_each_chunk_about_once(source):
    data, array = source
    plan = plan_for(array.shape, EngineConfig(window=(48, 48), overlap=0.25, block=(64, 64)))
    cache = ChunkCache(array)
    for b in plan.order():
        if not plan.windows(b):
            continue
        lo, hi = region_of(plan, b)
        lo, hi = [max(v, 0) for v in lo], [min(v, s) for v, s in zip(hi, array.shape[1:])]
        np.testing.assert_array_equal(cache[:, lo[0] : hi[0], lo[1] : hi[1]], data[:, lo[0] : hi[0], lo[1] : hi[1]])
    n_chunks = 5 * 7
    assert cache.decoded <= 2 * n_chunks  # without the cache: up to 4 decodes per chunk (2^2 blocks read it)


def test_needs_whole_channel_chunks():
    array = zarr.create_array(store={}, shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint8")
    with pytest.raises(ValueError, match="whole-channel chunks"):
        ChunkCache(array)


class SlowArray:
    """A zarr array whose chunk reads take a while and are counted (to make readers overlap)."""

    def __init__(self, array, fail_first: int = 0) -> None:
        self.array, self.shape, self.chunks, self.dtype = array, array.shape, array.chunks, array.dtype
        self.reads: list[tuple] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __getitem__(self, key):
        with self.lock:
            self.reads.append(tuple((s.start, s.stop) for s in key[1:]))
            fail = len(self.reads) <= self.fail_first
        time.sleep(0.05 if fail else 0.01)
        if fail:
            raise OSError("chunk unreadable")
        return self.array[key]


def test_concurrent_readers_get_equal_reads_and_decode_each_chunk_once(source):
    data, array = source
    slow = SlowArray(array)
    cache = ChunkCache(slow, capacity=64)  # holds every chunk: any second decode would be a race
    boxes = [(r, r + 100, c, c + 120) for r in range(0, 200, 50) for c in range(0, 290, 70)] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        reads = list(pool.map(lambda b: cache[:, b[0] : b[1], b[2] : b[3]], boxes))
    for (r0, r1, c0, c1), got in zip(boxes, reads):
        np.testing.assert_array_equal(got, data[:, r0:r1, c0:c1])
    assert len(slow.reads) == len(set(slow.reads)) == cache.decoded


def test_a_failed_decode_reaches_every_waiter_and_is_retried(source):
    data, array = source
    slow = SlowArray(array, fail_first=1)
    cache = ChunkCache(slow)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(lambda: cache[:, 0:10, 0:10])
        while not slow.reads:  # the first reader is decoding (for 10 ms)...
            time.sleep(0.001)
        second = pool.submit(lambda: cache[:, 0:10, 0:10])  # ...so the second waits for it
        errors = [first.exception(), second.exception()]
    assert all(isinstance(e, OSError) for e in errors) and len(slow.reads) == 1
    np.testing.assert_array_equal(cache[:, 0:10, 0:10], data[:, 0:10, 0:10])  # not cached as failed
