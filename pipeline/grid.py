"""Pure grid maths for the engine: the global window grid and the block grid.

Everything here is per axis and separable: a window grid or block grid in N dimensions is the
product of its per-axis grids. No I/O, no torch.

Coordinates: *image* coordinates index the input's spatial axes ``(Y, X)`` or ``(Z, Y, X)``.
When the image is smaller than a window along an axis it is padded symmetrically (as MONAI's
``sliding_window_inference`` does) and windows live in *padded* coordinates,
``padded = image + pad_before``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from itertools import product

from pipeline.errors import EngineError


def scan_interval(size: int, window: int, overlap: float) -> int:
    """Stride between window starts along one axis, exactly as MONAI's ``_get_scan_interval``."""
    if window == size:
        return window
    return max(int(window * (1 - overlap)), 1)


def axis_starts(size: int, window: int, overlap: float) -> tuple[int, ...]:
    """Window starts along one axis of a (padded) size ``>= window``, last window snapped to the edge.

    Mirrors ``monai.data.utils.dense_patch_slices`` so results match MONAI window for window.
    """
    if size < window:
        raise EngineError(f"axis of {size} px is smaller than the window ({window} px); pad it first")
    stride = scan_interval(size, window, overlap)
    count = next(d for d in range(math.ceil(size / stride) + 1) if d * stride + window >= size) + 1
    return tuple(min(i * stride, size - window) for i in range(count))


# blocks per strip of BlockPlan.order (8 x 1024 px: one strip's row of pieces fits the CPU's 128 MB budget)
STRIP_BLOCKS = 8


@dataclass(frozen=True)
class WindowGrid:
    """The one global window grid of an image: depends only on image shape, window and overlap.

    Args:
        shape: spatial image shape, ``(Y, X)`` or ``(Z, Y, X)`` in pixels/voxels.
        window: window size per axis.
        overlap: fraction of a window shared with the next one, ``0 <= overlap < 1``.
    """

    shape: tuple[int, ...]
    window: tuple[int, ...]
    overlap: float

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.window):
            raise EngineError(f"image has {len(self.shape)} spatial axes but the window {self.window} has {len(self.window)}")
        if min(self.shape) < 1:
            raise EngineError(f"image shape {self.shape} has an empty axis")
        if not 0 <= self.overlap < 1:
            raise EngineError(f"overlap {self.overlap} must satisfy 0 <= overlap < 1")

    @cached_property
    def padded_shape(self) -> tuple[int, ...]:
        """The image shape padded (symmetrically, as MONAI) so that every axis holds at least one window, pixels/voxels."""
        return tuple(max(s, w) for s, w in zip(self.shape, self.window))

    @cached_property
    def pad_before(self) -> tuple[int, ...]:
        """Padding before the image on each spatial axis, pixels/voxels (``padded_shape - shape`` split evenly, the extra one after)."""
        return tuple((p - s) // 2 for p, s in zip(self.padded_shape, self.shape))

    @cached_property
    def starts(self) -> tuple[tuple[int, ...], ...]:
        """Per-axis window starts in padded coordinates."""
        return tuple(axis_starts(p, w, self.overlap) for p, w in zip(self.padded_shape, self.window))

    @property
    def n_windows(self) -> int:
        """Windows in the whole grid."""
        return math.prod(len(s) for s in self.starts)


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of the window grid maps onto one axis of the block grid.

    ``anchored[b]`` is the range of window indices whose (clipped) start lies in block ``b``;
    ``box[b]`` the image-coordinate extent ``(lo, hi)`` those windows cover (``lo == hi`` when empty);
    ``targets[b]`` the blocks that extent overlaps, ``sources[b]`` the blocks whose extent overlaps ``b``.
    """

    size: int
    block: int
    window: int
    pad_before: int
    starts: tuple[int, ...]
    anchored: tuple[range, ...]
    box: tuple[tuple[int, int], ...]
    targets: tuple[tuple[int, ...], ...]
    sources: tuple[tuple[int, ...], ...]

    @property
    def n_blocks(self) -> int:
        """Blocks along this axis."""
        return len(self.anchored)

    def block_extent(self, b: int) -> tuple[int, int]:
        """Image-coordinate extent ``(lo, hi)`` of block ``b`` along this axis, pixels/voxels (the last block is clipped to the image)."""
        return b * self.block, min((b + 1) * self.block, self.size)


def plan_axis(size: int, block: int, window: int, pad_before: int, starts: tuple[int, ...]) -> AxisPlan:
    """Assign each window start of one axis to the block containing it (its anchor)."""
    n_blocks = math.ceil(size / block)
    anchors = [min(max(s - pad_before, 0), size - 1) // block for s in starts]
    anchored = []
    box = []
    for b in range(n_blocks):
        idx = [i for i, a in enumerate(anchors) if a == b]
        anchored.append(range(idx[0], idx[-1] + 1) if idx else range(0))
        if idx:
            lo = max(starts[idx[0]] - pad_before, 0)
            hi = min(starts[idx[-1]] + window - pad_before, size)
            box.append((lo, hi))
        else:
            box.append((b * block, b * block))
    targets = tuple(
        tuple(t for t in range(n_blocks) if lo < hi and lo < min((t + 1) * block, size) and t * block < hi)
        for lo, hi in box
    )
    sources = tuple(tuple(b for b in range(n_blocks) if t in targets[b]) for t in range(n_blocks))
    return AxisPlan(size, block, window, pad_before, starts, tuple(anchored), tuple(box), targets, sources)


@dataclass(frozen=True)
class BlockPlan:
    """The block grid of an image and, per block, the windows it runs and where their output goes.

    Blocks are the units of work and of output (one zarr chunk each). A window runs in exactly one
    block (the one containing its start); its weighted logits reach every block it covers.
    """

    grid: WindowGrid
    block: tuple[int, ...]
    axes: tuple[AxisPlan, ...]

    @classmethod
    def build(cls, grid: WindowGrid, block: tuple[int, ...]) -> BlockPlan:
        """The plan of ``grid`` cut into blocks of ``block`` pixels/voxels per spatial axis (same axis order as ``grid.shape``).

        Raises:
            EngineError: ``block`` does not give one positive size per spatial axis.
        """
        if len(block) != len(grid.shape) or min(block) < 1:
            raise EngineError(f"block {block} must give one positive size per spatial axis of {grid.shape}")
        axes = tuple(
            plan_axis(size, b, w, p, s)
            for size, b, w, p, s in zip(grid.shape, block, grid.window, grid.pad_before, grid.starts)
        )
        return cls(grid, tuple(block), axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """Block-grid shape (number of blocks per axis)."""
        return tuple(a.n_blocks for a in self.axes)

    @property
    def n_blocks(self) -> int:
        """Blocks in the whole plan."""
        return math.prod(self.shape)

    def order(self, strip: int | None = None) -> list[tuple[int, ...]]:
        """Blocks in processing order: strips of ``strip`` (default :data:`STRIP_BLOCKS`) blocks along
        the innermost axis, one after the other; within a strip, lexicographic with the longest
        axis outermost.

        Every source of a block comes before the block itself (sources are never after a block
        along any axis: earlier strips are finished, and within a strip the order is
        lexicographic). Strips keep the frontier short: a row of blocks waits for only ``strip``
        blocks' pieces, not a whole image row's (at 32k^2 px, 1024 px blocks, 5 classes: ~120 MB
        instead of ~480 MB); what waits longer (the pieces crossing into the next strip) is what
        :class:`pipeline.pending.PendingPieces` sends to disk first.
        """
        strip = max(1, STRIP_BLOCKS if strip is None else strip)
        axis_order = sorted(range(len(self.shape)), key=lambda a: -self.grid.shape[a])
        inner = axis_order[-1]
        blocks = []
        for first in range(0, self.shape[inner], strip):
            ranges = [range(self.shape[a]) for a in axis_order[:-1]]
            ranges.append(range(first, min(first + strip, self.shape[inner])))
            for combo in product(*ranges):
                index = [0] * len(combo)
                for a, v in zip(axis_order, combo):
                    index[a] = v
                blocks.append(tuple(index))
        return blocks

    def slices(self, b: tuple[int, ...]) -> tuple[slice, ...]:
        """Image-coordinate slices of block ``b``."""
        return tuple(slice(*a.block_extent(i)) for a, i in zip(self.axes, b))

    def windows(self, b: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Padded-coordinate starts of the windows anchored in block ``b`` (C order)."""
        per_axis = [[a.starts[i] for i in a.anchored[bi]] for a, bi in zip(self.axes, b)]
        return list(product(*per_axis))

    def box(self, b: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Image-coordinate extent covered by block ``b``'s windows."""
        return tuple(a.box[bi] for a, bi in zip(self.axes, b))

    def targets(self, b: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Blocks that block ``b``'s windows write into (``b`` among them when it anchors windows), C order."""
        return list(product(*(a.targets[bi] for a, bi in zip(self.axes, b))))

    def sources(self, b: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Blocks whose windows write into block ``b``, C order: ``b`` is final once all of them have run."""
        return list(product(*(a.sources[bi] for a, bi in zip(self.axes, b))))
