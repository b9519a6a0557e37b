"""Region reads from a chunked array that decode each chunk once for neighbouring blocks.

A block's read region reaches half a window into the next blocks, so with blocks = chunks every
region touches up to 2^d chunks and each chunk was decoded 2^d times over a run. Blocks run in
lexicographic order, so the chunks a block shares with the previous one are the ones it needs
again: a few decoded chunks kept in a small LRU halve the decoding in 2D. (zarr 3 keeps no decoded
chunks itself.) Safe for the engine's several reader threads: a chunk is decoded by the first
thread that needs it (outside the lock, so decodes run in parallel); the others wait for it.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np


class ChunkCache:
    """``array[(slice(None), *spatial_slices)]`` assembled from whole decoded chunks, the last ``capacity`` kept.

    ``array``: ``(C, *spatial)`` with ``chunks == (C, *chunk_spatial)`` (zarr-like: ``shape``,
    ``chunks``, ``dtype``, numpy slicing).
    """

    def __init__(self, array: Any, capacity: int = 8) -> None:
        if tuple(array.chunks)[0] != array.shape[0]:
            raise ValueError(f"ChunkCache needs whole-channel chunks, got chunks {array.chunks} for shape {array.shape}")
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk = tuple(array.chunks)[1:]
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, ...], _Slot] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = 0

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        channels, *spatial = key
        if channels != slice(None) or len(spatial) != len(self.chunk) or any(s.step not in (None, 1) for s in spatial):
            return np.asarray(self.array[key])
        bounds = [(s.start or 0, self.shape[1 + a] if s.stop is None else s.stop) for a, s in enumerate(spatial)]
        out = np.empty((self.shape[0], *(b - a for a, b in bounds)), dtype=self.dtype)
        ranges = [range(a // c, -(-b // c)) for (a, b), c in zip(bounds, self.chunk)]
        for index in itertools.product(*ranges):
            data = self._chunk(index)
            src, dst = [], []
            for (a, b), i, c in zip(bounds, index, self.chunk):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            out[(slice(None), *dst)] = data[(slice(None), *src)]
        return out

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            slot = self._cache.get(index)
            mine = slot is None
            if mine:
                slot = self._cache[index] = _Slot()
                self.decoded += 1
                if len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(index)
        if not mine:
            return slot.wait()
        key = (slice(None), *(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.chunk, self.shape[1:])))
        try:
            slot.set(np.asarray(self.array[key]))
        except BaseException as error:
            with self._lock:  # let a later read try again rather than keep the failure
                if self._cache.get(index) is slot:
                    del self._cache[index]
            slot.fail(error)
            raise
        return slot.wait()


class _Slot:
    """One chunk's decoded data, or the promise of it while the first reader decodes it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._data: np.ndarray | None = None
        self._error: BaseException | None = None

    def set(self, data: np.ndarray) -> None:
        self._data = data
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    def wait(self) -> np.ndarray:
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data
