"""Where pieces wait for their target block: in memory up to a budget, then on local disk.

The pending spill of the block frontier grows with the image's shorter side (about
``side x overlap x classes x 4`` bytes). Past ``memory_bytes`` new pieces are saved as ``.npy``
files in a scratch folder and loaded back when their block is finalised, so peak memory is bounded
by the block and the budget, not by the image. (Dask's own spilling needs a cluster; this needs
nothing, which is why it is written here.)
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.engine_types import Block, Piece


class PendingPieces:
    """A map ``target block -> pieces`` with a memory budget and a disk overflow."""

    def __init__(self, memory_bytes: int = 512 * 2**20, scratch_dir: str | Path | None = None) -> None:
        self.memory_bytes = memory_bytes
        self._scratch_parent = scratch_dir
        self._scratch: Path | None = None
        self._pieces: dict[Block, list[Piece | tuple[Piece, Path]]] = defaultdict(list)
        self.bytes_in_memory = 0
        self.peak_bytes_in_memory = 0
        self.pieces_on_disk = 0

    def add(self, piece: Piece) -> None:
        size = piece.nbytes
        if self.bytes_in_memory + size <= self.memory_bytes:
            self._pieces[piece.target].append(piece)
            self.bytes_in_memory += size
            self.peak_bytes_in_memory = max(self.peak_bytes_in_memory, self.bytes_in_memory)
            return
        path = self._scratch_path() / f"{'_'.join(map(str, piece.source))}-{'_'.join(map(str, piece.target))}.npy"
        np.save(path, piece.on_host().data)
        self._pieces[piece.target].append((replace(piece, data=np.empty(0, np.float32)), path))
        self.pieces_on_disk += 1

    def pop(self, target: Block) -> list[Piece]:
        pieces = []
        for item in self._pieces.pop(target, []):
            if isinstance(item, Piece):
                self.bytes_in_memory -= item.nbytes
                pieces.append(item)
            else:
                stub, path = item
                pieces.append(replace(stub, data=np.load(path)))
                path.unlink()
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
