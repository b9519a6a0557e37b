"""Process memory helpers: freed heap memory really goes back to the system."""

from __future__ import annotations

import ctypes.util
import sys

import numpy as np
import pytest

from pipeline.memory import release_free_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"), reason="glibc only")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_release_free_memory_returns_freed_heap_blocks():
    # 200 MB in 100 KB blocks (below glibc's mmap threshold: they live in the heap), every 20th kept
    # alive so the freed ones are holes the heap cannot shrink past on its own
    blocks = [np.ones(100 * 1024, dtype=np.uint8) for _ in range(2000)]
    kept = blocks[::20]
    del blocks
    before = rss_mb()
    assert release_free_memory()
    after = rss_mb()
    assert before - after > 100, (before, after)
    assert all(int(b[0]) == 1 for b in kept)
