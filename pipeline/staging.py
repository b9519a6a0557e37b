"""How read regions travel from the engine's reader threads to the model's device.

CPU: the reader fills float32 buffers from a :class:`~pipeline.workspace.BufferPool`, and the engine
gives each back once its block ran (no fresh pages per block).

CUDA: the reader fills page-locked buffers straight away (torch's caching host allocator: reused
across blocks, and kept out of reuse until the copy that reads them has finished, so no second
host copy is made to pin a region), then copies them to the GPU on its own stream. The model's
stream only waits for that copy's event, never the host, so the next block's copy overlaps this
block's model. The device tensor is marked as used by the model's stream so the allocator does not
hand its memory back to the copy stream early (the pattern of ``torch.cuda.Stream`` data prefetchers).

Results go the other way with :func:`fetch`: a block's labels are copied into page-locked memory
without waiting, and the writer thread waits for that copy's event before it writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.workspace import BufferPool


@dataclass
class Staged:
    """A region on its way to the model: the tensor and, on CUDA, the event its copy records."""

    tensor: torch.Tensor
    copied: Any = None


class RegionStaging:
    """Buffers and transfers for read regions; ``host_buffers`` is what the reader fills.

    Thread use: :meth:`send` runs on reader threads, :meth:`receive` and :meth:`release` on the
    engine's main thread.
    """

    def __init__(self, device: torch.device, keep: int) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.host_buffers = PinnedBuffers() if self.cuda else BufferPool(keep=keep)
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def send(self, region: torch.Tensor) -> Staged:
        """Start moving a filled host region to the device (reader thread)."""
        if not self.cuda:
            return Staged(region)
        return Staged(*self._copy_to_device(region))

    def receive(self, staged: Staged) -> torch.Tensor:
        """The region, usable on the main thread's current stream (which waits for its copy on the GPU)."""
        if staged.copied is not None:
            self._wait_for_copy(staged)
        return staged.tensor

    def _copy_to_device(self, region: torch.Tensor) -> tuple[torch.Tensor, Any]:
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            on_device = region.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        return on_device, copied

    def _wait_for_copy(self, staged: Staged) -> None:
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(staged.copied)
        staged.tensor.record_stream(stream)

    def release(self, region: torch.Tensor) -> None:
        """The block that used ``region`` has run: its host buffer may be reused (CPU)."""
        if not self.cuda:
            self.host_buffers.give(region)


class PinnedBuffers:
    """``take(shape)``: a page-locked float32 buffer from torch's caching host allocator.

    The allocator caches freed page-locked blocks and records an event for every non-blocking copy
    out of them, so a buffer is only reused after its copy has finished; nothing to give back.
    """

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(math.prod(shape), dtype=torch.float32, pin_memory=True).view(shape)

    def give(self, buffer: torch.Tensor) -> None:  # the allocator reuses it when its last user is gone
        pass


@dataclass
class Fetched:
    """A result on its way to the host: ``wait()`` gives it as a numpy array once its copy is done."""

    tensor: torch.Tensor
    copied: Any = None

    def wait(self) -> np.ndarray:
        if self.copied is not None:
            self.copied.synchronize()
        return self.tensor.numpy()


def fetch(result: torch.Tensor) -> Fetched:
    """Start copying ``result`` to the host: on a GPU a non-blocking copy into page-locked memory
    and an event the waiter synchronises on (no wait here); on the CPU the tensor itself."""
    if result.device.type != "cuda":
        return Fetched(result)
    host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
    host.copy_(result, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return Fetched(host, copied)
