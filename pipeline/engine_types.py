"""Small value types shared by the engine and its helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Block = tuple[int, ...]


@dataclass(frozen=True)
class Piece:
    """Weighted logits of one source block that land in one target block.

    ``where`` are slices relative to the target block; ``data`` is ``(K, *piece)`` (plus one weight
    channel when the output is mean logits), float32.
    """

    source: Block
    target: Block
    where: tuple[slice, ...]
    data: np.ndarray
