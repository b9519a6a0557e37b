"""Region reads through the chunk cache equal direct reads and decode each chunk about once."""

from __future__ import annotations

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
