"""Where pieces wait for their target block: in memory up to a budget, then on local disk.

The pending spill of the block frontier grows with the image (see :meth:`pipeline.grid.BlockPlan.order`).
Past ``memory_bytes`` pieces are saved as ``.npy`` files in a scratch folder and loaded back when
their block is finalised, so peak memory is bounded by the block and the budget, not by the image.
Which pieces go to disk: those whose target block comes last in the processing order (``rank``),
evicting pieces already in memory when a new one is needed sooner, so the pieces that wait briefly
(the next row of a strip) stay in memory and only the long waits (into the next strip) pay the trip.
(Dask's own spilling needs a cluster; this needs nothing, which is why it is written here.)
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.engine_types import Block, Piece


class PendingPieces:
    """A map ``target block -> pieces`` with a memory budget and a disk overflow.

    ``rank``: position of a target block in the processing order (smaller = finalised sooner);
    ``None`` sends new pieces to disk once the budget is full, whatever their target.
    """

    def __init__(self, memory_bytes: int = 512 * 2**20, scratch_dir: str | Path | None = None, rank: Callable[[Block], int] | None = None) -> None:
        self.memory_bytes = memory_bytes
        self._scratch_parent = scratch_dir
        self._scratch: Path | None = None
        self._pieces: dict[Block, list[Piece | tuple[Piece, Path]]] = defaultdict(list)
        self._rank = rank
        self._in_memory: dict[Block, int] = defaultdict(int)  # bytes in memory per target
        self.bytes_in_memory = 0
        self.peak_bytes_in_memory = 0
        self.pieces_on_disk = 0

    def add(self, piece: Piece) -> None:
        size = piece.nbytes
        if self.bytes_in_memory + size > self.memory_bytes and self._rank is not None:
            self._evict_later_than(self._rank(piece.target), self.bytes_in_memory + size - self.memory_bytes)
        if self.bytes_in_memory + size <= self.memory_bytes:
            self._pieces[piece.target].append(piece)
            self._in_memory[piece.target] += size
            self.bytes_in_memory += size
            self.peak_bytes_in_memory = max(self.peak_bytes_in_memory, self.bytes_in_memory)
            return
        self._pieces[piece.target].append(self._to_disk(piece))

    def _evict_later_than(self, rank: int, needed: int) -> None:
        """Send to disk in-memory pieces whose targets come after ``rank``, latest first, until ``needed`` bytes are free."""
        assert self._rank is not None
        while needed > 0:
            later = [t for t, n in self._in_memory.items() if n and self._rank(t) > rank]
            if not later:
                return
            target = max(later, key=self._rank)
            items = self._pieces[target]
            for i, item in enumerate(items):
                if isinstance(item, Piece):
                    items[i] = self._to_disk(item)
                    self._in_memory[target] -= item.nbytes
                    self.bytes_in_memory -= item.nbytes
                    needed -= item.nbytes
                    break

    def _to_disk(self, piece: Piece) -> tuple[Piece, Path]:
        path = self._scratch_path() / f"{self.pieces_on_disk}-{'_'.join(map(str, piece.source))}-{'_'.join(map(str, piece.target))}.npy"
        np.save(path, piece.on_host().data)
        self.pieces_on_disk += 1
        return replace(piece, data=np.empty(0, np.float32)), path

    def pop(self, target: Block) -> list[Piece]:
        pieces = []
        for item in self._pieces.pop(target, []):
            if isinstance(item, Piece):
                self.bytes_in_memory -= item.nbytes
                self._in_memory[target] -= item.nbytes
                pieces.append(item)
            else:
                stub, path = item
                pieces.append(replace(stub, data=np.load(path)))
                path.unlink()
        self._in_memory.pop(target, None)
        return pieces

    def _scratch_path(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="segpipe-pending-", dir=self._scratch_parent))
        return self._scratch

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> PendingPieces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
