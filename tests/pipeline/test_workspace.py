"""Reused buffers: the engine's read path gives the same values whatever buffer it is handed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.normalize import normalizer
from models.spec import Normalize
from pipeline.engine import read_region
from pipeline.workspace import BufferPool, Workspace

RNG = np.random.default_rng(3)
SOURCE = RNG.integers(0, 256, size=(3, 40, 50), dtype=np.uint8)
SCALE = normalizer(Normalize(kind="meanstd", mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0)))


def reference(lo, hi, preprocess):
    """Cast, normalise, then zero-pad outside the image: the plain numpy definition."""
    data = preprocess(SOURCE.astype(np.float32))
    padded = np.zeros((3, 40 + 40, 50 + 40), np.float32)
    padded[:, 20:60, 20:70] = data
    return padded[:, lo[0] + 20 : hi[0] + 20, lo[1] + 20 : hi[1] + 20]


BOXES = [((0, 0), (40, 50)), ((5, 7), (30, 44)), ((-6, -3), (20, 25)), ((30, 40), (52, 63)), ((-5, -5), (45, 55))]


@pytest.mark.parametrize("lo,hi", BOXES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("preprocess", [SCALE, lambda a: (a - 7) / 3, None], ids=["in-place", "callable", "none"])
def test_read_region_matches_numpy_definition(lo, hi, channels_last, preprocess):
    pool = BufferPool(keep=1)
    dirty = pool.take((200, 200))
    dirty.fill_(np.nan)  # a reused buffer full of garbage: padding must still come out zero
    pool.give(dirty)
    region = read_region(SOURCE, lo, hi, preprocess, channels_last=channels_last, pool=pool)
    expected = reference(lo, hi, preprocess or (lambda a: a))
    got = region.numpy().transpose(2, 0, 1) if channels_last else region.numpy()
    assert region.dtype == torch.float32
    np.testing.assert_array_equal(got, expected)


def test_read_region_casts_types_torch_lacks_and_big_endian():
    source = SOURCE.astype(">u2")  # big-endian, as some rasters store it
    np.testing.assert_array_equal(read_region(source, (0, 0), (40, 50)).numpy(), SOURCE.astype(np.float32))
    source = SOURCE.astype(np.uint64)
    np.testing.assert_array_equal(read_region(source, (0, 0), (40, 50)).numpy(), SOURCE.astype(np.float32))


def test_workspace_reuses_storage_and_grows():
    ws = Workspace()
    a = ws.get("acc", (2, 3))
    b = ws.get("acc", (3, 2))
    assert a.data_ptr() == b.data_ptr()  # same memory, new shape
    c = ws.get("acc", (10, 10))
    assert c.shape == (10, 10) and c.is_contiguous()
    assert ws.get("other", (2, 3)).data_ptr() != c.data_ptr()
    assert ws.get("acc", (4,), torch.int64).dtype == torch.int64


def test_pool_hands_back_big_enough_buffers_and_keeps_at_most_keep():
    pool = BufferPool(keep=2)
    small, big, extra = pool.take((10,)), pool.take((100,)), pool.take((5,))
    for buffer in (small, big, extra):
        pool.give(buffer)
    assert len(pool._free) == 2
    again = pool.take((50,))
    assert again.data_ptr() == big.data_ptr()
    assert pool.take((50,)).data_ptr() not in (small.data_ptr(), big.data_ptr())
