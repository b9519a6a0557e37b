"""Value types of the engine: its settings (:class:`EngineConfig`), its report, its modes, and the
block/piece types shared by the engine and its helpers.

Kept apart from :mod:`pipeline.engine` so that :mod:`pipeline.windows` (which the engine imports)
can use :class:`EngineConfig` without an import cycle; :mod:`pipeline.engine` re-exports the public
names, which stay importable from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from pipeline.errors import EngineError

Blend = Literal["gaussian", "constant"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]
Compile = Literal["none", "default", "reduce-overhead", "max-autotune"]
Output = Literal["labels", "logits"]
Preprocess = Callable[[np.ndarray], np.ndarray]

DEFAULT_BLOCK_2D = 1024
DEFAULT_BLOCK_3D = 128


class ArraySource(Protocol):
    """What the engine reads: ``shape == (C, *spatial)`` and numpy-style slicing."""

    shape: tuple[int, ...]

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class EngineConfig:
    """How to slide windows over an image.

    Args:
        window: window size per spatial axis, ``(Y, X)`` or ``(Z, Y, X)``, pixels/voxels.
        overlap: fraction of a window shared with its neighbour (MONAI semantics).
        blend: ``gaussian`` importance map (sigma = ``sigma_scale`` x window) or ``constant``.
        block: output block (zarr chunk) size per spatial axis; ``None`` picks a default.
        batch_size: windows per model call; ``0`` = 4, or 16 for 2D windows on a GPU. Halved for
            the rest of the run when the device runs out of memory.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.
        output: ``labels`` (argmax as class ids) or ``logits`` (weighted mean logits, float32).
        class_ids: label value of each logit channel; ``None`` means ``0..K-1``.
        label_dtype: numpy dtype of the labels.
        precision: ``auto`` = bf16/fp16 autocast on GPU, float32 on CPU.
        sigma_scale: gaussian sigma as a fraction of the window.
        prefetch: blocks read ahead on background threads (at least one per reader).
        readers: reader threads (decode, normalise, copy to the device); ``0`` = one on CPU, where
            the model needs the cores, and up to 4 on a GPU, where one thread would starve it.
        pending_memory_mb: memory for pieces waiting for their block; beyond it they wait on local
            disk. ``0`` = 128 MB on CPU; on a GPU (where the pieces wait in device memory and a trip
            to disk stalls the device) 10 % of the device's memory, at most 8 GB: a row of blocks
            of a 100k-pixel-wide raster with 10 classes.
        compile: ``torch.compile`` mode for the model (``none`` = eager).
    """

    window: tuple[int, ...]
    overlap: float = 0.25
    blend: Blend = "gaussian"
    block: tuple[int, ...] | None = None
    batch_size: int = 0
    device: str = "auto"
    output: Output = "labels"
    class_ids: tuple[int, ...] | None = None
    label_dtype: str = "uint8"
    precision: Precision = "auto"
    sigma_scale: float = 0.125
    prefetch: int = 2
    readers: int = 0
    pending_memory_mb: int = 0
    compile: Compile = "none"

    def block_for(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The block size to use for an image of spatial shape ``spatial``."""
        if self.block is not None:
            if len(self.block) != len(spatial):
                raise EngineError(f"block {self.block} has {len(self.block)} axes, image has {len(spatial)}")
            return tuple(int(b) for b in self.block)
        default = DEFAULT_BLOCK_2D if len(spatial) == 2 else DEFAULT_BLOCK_3D
        return tuple(max(default, w) for w in self.window)

    def batch_for(self, device: torch.device) -> int:
        """Windows per model call on ``device`` (see ``batch_size``)."""
        if self.batch_size > 0:
            return self.batch_size
        return 16 if device.type == "cuda" and len(self.window) == 2 else 4

    def pending_bytes(self, device: torch.device) -> int:
        """Memory for waiting pieces on ``device`` (see ``pending_memory_mb``)."""
        if self.pending_memory_mb > 0:
            return self.pending_memory_mb * 2**20
        if device.type != "cuda":
            return 128 * 2**20
        return min(8 * 2**30, torch.cuda.get_device_properties(device).total_memory // 10)

    def reader_threads(self, device: torch.device) -> int:
        """How many reader threads to run on ``device`` (see ``readers``)."""
        if self.readers > 0:
            return self.readers
        return 1 if device.type != "cuda" else max(1, min(4, (os.cpu_count() or 1) // 4))


@dataclass
class EngineReport:
    """What a run did: window counts (to check that no window runs twice) and timings in seconds.

    ``seconds_model`` is time in the model's forward; ``seconds_stitch`` weighting, accumulating,
    cutting pieces and finalising (argmax); on a GPU both are device time from CUDA events.
    ``seconds_read`` (summed over the reader threads) and ``seconds_write`` run on background
    threads and overlap the others.
    """

    windows_total: int = 0
    windows_run: int = 0
    blocks_total: int = 0
    blocks_run: int = 0
    blocks_skipped: int = 0
    seconds: float = 0.0
    seconds_read: float = 0.0
    seconds_model: float = 0.0
    seconds_stitch: float = 0.0
    seconds_write: float = 0.0
    pieces_on_disk: int = 0
    peak_pending_bytes: int = 0

    @property
    def duplication(self) -> float:
        """Windows run / windows in the global grid (1.0 = no window ran twice)."""
        return self.windows_run / self.windows_total if self.windows_total else 0.0


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
