"""Small value types shared by the engine and its helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Block = tuple[int, ...]


@dataclass(frozen=True)
class Piece:
    """Weighted logits of one source block that land in one target block.

    ``where`` are slices relative to the target block; ``data`` is ``(K, *piece)`` (plus one weight
    channel when the output is mean logits), float32: a tensor on the engine's device while it
    waits in memory (so on a GPU the pieces never leave it), a numpy array after a trip to disk or
    between Dask workers.
    """

    source: Block
    target: Block
    where: tuple[slice, ...]
    data: np.ndarray | torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) if isinstance(self.data, np.ndarray) else self.data.numel() * self.data.element_size()

    def on_host(self) -> Piece:
        """The same piece with ``data`` as a numpy array (for disk and for the network)."""
        if isinstance(self.data, np.ndarray):
            return self
        return Piece(self.source, self.target, self.where, self.data.detach().cpu().numpy())
