"""Block-streaming sliding-window inference.

One global window grid per image (:class:`pipeline.grid.WindowGrid`, identical to MONAI's
``sliding_window_inference``); the output is produced block by block (a block = one zarr chunk).
Each window runs exactly once, in the block that contains its start; its importance-weighted
logits are cut into *pieces*, one per block the window covers. A block is finalised (summed,
argmax, written) once all its source blocks have run. Processing blocks in lexicographic order
guarantees that, so memory holds one block's work plus the pending spill of the frontier.

Axis order: sources are ``(C, Y, X)`` or ``(C, Z, Y, X)``; outputs ``(Y, X)``/``(Z, Y, X)`` labels or
``(K, ...)`` mean logits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from pipeline.chunk_cache import ChunkCache
from pipeline.engine_types import (
    DEFAULT_BLOCK_2D,
    DEFAULT_BLOCK_3D,
    ArraySource,
    Block,
    EngineConfig,
    EngineReport,
    Output,
    Piece,
    Preprocess,
)
from pipeline.errors import EngineError
from pipeline.grid import STRIP_BLOCKS, BlockPlan, WindowGrid
from pipeline.pending import PendingPieces
from pipeline.staging import Fetched, PinnedBuffers, RegionStaging, Staged, fetch
from pipeline.stop import check_stop
from pipeline.windows import SpanTimer, WindowRunner, auto_device
from pipeline.workspace import BufferPool, Workspace

log = logging.getLogger(__name__)

# the engine's settings, report and types live in pipeline.engine_types (pipeline.windows needs them too);
# they are imported from here, as before
__all__ = [
    "DEFAULT_BLOCK_2D", "DEFAULT_BLOCK_3D", "ArraySource", "EngineConfig", "EngineReport", "Output", "Preprocess",
    "auto_device", "block_output", "check_output", "class_table", "compute_block", "finalize_block", "plan_for",
    "read_region", "region_of", "run_engine", "sum_block", "write_block",
]


def clip_region(lo: tuple[int, ...], hi: tuple[int, ...], spatial: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of the region ``lo:hi`` inside an image of shape ``spatial`` (pixels/voxels per
    spatial axis): its slices in image coordinates and in region coordinates (the region may extend
    past the image where the window grid is padded)."""
    inside_lo = tuple(max(a, 0) for a in lo)
    inside_hi = tuple(min(b, n) for b, n in zip(hi, spatial))
    image = tuple(slice(a, b) for a, b in zip(inside_lo, inside_hi))
    region = tuple(slice(a - low, b - low) for a, b, low in zip(inside_lo, inside_hi, lo))
    return image, region


def read_region(
    source: ArraySource,
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    preprocess: Preprocess | None = None,
    *,
    channels_last: bool = False,
    pool: BufferPool | PinnedBuffers | None = None,
) -> torch.Tensor:
    """Read ``source[:, lo:hi]`` as a float32 CPU tensor; parts outside the image are zero (after preprocess).

    Returns ``(C, *region)``, or ``(*region, C)`` when ``channels_last`` (the 2D model layout). The
    raw values are cast, transposed and normalised in one pass into the output buffer (taken from
    ``pool`` when given) when ``preprocess`` offers ``into(raw, out)`` (the spec normalisers do);
    any other callable ``(C, *spatial) -> (C, *spatial)`` is applied on a float32 copy. numpy only,
    channel by channel: this runs on the reader thread, where torch's OpenMP threads would compete
    with the model's.
    """
    channels, spatial = source.shape[0], source.shape[1:]
    in_image, in_region = clip_region(lo, hi, spatial)
    raw = np.asarray(source[(slice(None), *in_image)])
    size = tuple(b - a for a, b in zip(lo, hi))
    shape = (*size, channels) if channels_last else (channels, *size)
    buffer = pool.take(shape) if pool is not None else torch.empty(shape, dtype=torch.float32)
    array = buffer.numpy()
    if raw.shape[1:] != size:  # part of the region is padding
        array.fill(0)
    as_channels_first = np.moveaxis(array, -1, 0) if channels_last else array
    inside = as_channels_first[(slice(None), *in_region)]
    write_into = getattr(preprocess, "into", None)
    if write_into is not None:
        write_into(raw, inside)
    else:
        values = raw if preprocess is None else np.asarray(preprocess(raw.astype(np.float32)), dtype=np.float32)
        for c in range(channels):  # channel by channel: contiguous reads, one pass
            np.copyto(inside[c], values[c], casting="unsafe")
    return buffer


def region_of(plan: BlockPlan, b: Block) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Image-coordinate read region ``(lo, hi)`` of block ``b``'s windows, in pixels/voxels per spatial axis
    (``(Y, X)`` or ``(Z, Y, X)``); it may extend past the image (negative ``lo``, ``hi`` beyond the shape) when padded."""
    starts = plan.windows(b)
    lo = tuple(min(s[a] for s in starts) - plan.grid.pad_before[a] for a in range(len(plan.block)))
    hi = tuple(max(s[a] for s in starts) + w - plan.grid.pad_before[a] for a, w in enumerate(plan.grid.window))
    return lo, hi


def windows_with_data(plan: BlockPlan, b: Block, valid: ArraySource | None) -> list[tuple[int, ...]]:
    """The starts (padded-grid coordinates) of block ``b``'s windows that cover at least one valid pixel.

    ``valid``: ``(Y, X)`` or ``(Z, Y, X)``, nonzero where the image has data; None = every window.
    A window over nodata only changes no valid pixel's sum (it covers none), so leaving it out
    gives valid pixels bit-identical sums; the engine's pieces then hold 0 there.
    """
    starts = plan.windows(b)
    if valid is None or not starts:
        return starts
    lo, hi = region_of(plan, b)
    in_image, in_region = clip_region(lo, hi, plan.grid.shape)
    has_data = np.zeros(tuple(c - a for a, c in zip(lo, hi)), dtype=bool)  # padding has no data
    has_data[in_region] = np.asarray(valid[in_image]) != 0
    window = plan.grid.window
    kept = []
    for start in starts:
        offset = [s - p - low for s, p, low in zip(start, plan.grid.pad_before, lo)]
        if has_data[tuple(slice(o, o + w) for o, w in zip(offset, window))].any():
            kept.append(start)
    return kept


def compute_block(
    plan: BlockPlan, b: Block, region: torch.Tensor, runner: WindowRunner, starts: list[tuple[int, ...]] | None = None
) -> list[Piece]:
    """Run block ``b``'s windows over its read region and cut the result into pieces per target block.

    ``region`` is :func:`read_region`'s tensor in the runner's layout (``(C, *region)``, or
    ``(*region, C)`` for channels-last 2D models). ``starts``: the windows to run (a subset of
    ``plan.windows(b)``, see :func:`windows_with_data`); None = all; none = no pieces. Each piece
    holds ``(K, *piece)`` weighted logits (``(K + 1, ...)`` with the weight channel for
    ``output="logits"``) on the runner's device; the piece for ``b`` itself is a view of the
    runner's accumulator: with ``reuse_buffers`` it is valid until the next block runs.
    """
    starts = plan.windows(b) if starts is None else starts
    if not starts:
        return []
    lo, _ = region_of(plan, b)
    offsets = [tuple(s - p - low for s, p, low in zip(start, plan.grid.pad_before, lo)) for start in starts]
    acc = runner.accumulate(region, offsets)
    pieces = []
    for t in plan.targets(b):
        t_slices = plan.slices(t)
        box = plan.box(b)
        inter = [(max(bx[0], ts.start), min(bx[1], ts.stop)) for bx, ts in zip(box, t_slices)]
        src = tuple(slice(a - low, c - low) for (a, c), low in zip(inter, lo))
        dst = tuple(slice(a - ts.start, c - ts.start) for (a, c), ts in zip(inter, t_slices))
        view = acc[(slice(None), *src)]
        # a spill piece is copied so it does not keep the whole accumulator alive while it waits;
        # pieces stay on the runner's device (a GPU sums and argmaxes them without a round trip)
        pieces.append(Piece(b, t, dst, view if t == b else view.clone()))
    return pieces


def finalize_block(
    plan: BlockPlan,
    t: Block,
    pieces: list[Piece],
    config: EngineConfig,
    class_ids: np.ndarray | None,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """Sum the pieces that land in block ``t`` (in source order) and turn them into labels or mean logits.

    Returns the block's labels ``(*block)`` (``(Y, X)`` or ``(Z, Y, X)``, ``config.label_dtype``, class
    ids from ``class_ids``) or its mean logits ``(K, *block)`` float32. ``workspace``: where to keep
    the block's sum between calls (fresh memory when ``None``); the sum is formed on the workspace's
    device (the engine's: on a GPU only the labels come back).
    """
    return block_output(sum_block(plan, t, pieces, config, workspace).cpu().numpy(), config, class_ids)


def sum_block(plan: BlockPlan, t: Block, pieces: list[Piece], config: EngineConfig, workspace: Workspace | None = None) -> torch.Tensor:
    """The device half of :func:`finalize_block`: mean logits (float32), or the index of each
    pixel's best logit channel as the smallest integer type that holds it (so a GPU sends 1 byte
    per pixel back, not 8). A fresh tensor, not a workspace view."""
    shape = tuple(s.stop - s.start for s in plan.slices(t))
    workspace = workspace or Workspace()
    if not pieces:  # every window over the block covered nodata only (see windows_with_data): index 0 throughout
        if config.output == "logits":
            raise EngineError(f"block {t} has no window's logits; skipping windows without data needs output='labels'")
        return torch.zeros(shape, dtype=torch.uint8, device=workspace.device)
    ordered = sorted(pieces, key=lambda p: p.source)
    channels = ordered[0].data.shape[0]
    device = workspace.device
    # torch (multi-threaded) rather than numpy (one thread): these passes are memory-bound
    acc = workspace.get("sum", (channels, *shape)).zero_()
    for piece in ordered:
        data = torch.from_numpy(piece.data) if isinstance(piece.data, np.ndarray) else piece.data
        acc[(slice(None), *piece.where)] += data.to(device, non_blocking=True)
    if config.output == "logits":
        mean = acc[:-1] / acc[-1:]
        check_finite(mean, t)
        return mean
    # torch's max over the class axis is ~2.5x faster than np.argmax(axis=0); both return the first maximum
    best = (workspace.get("best", shape), workspace.get("index", shape, torch.int64))
    values, index = torch.max(acc, dim=0, out=best)
    check_finite(values, t)  # max propagates NaN and +inf: the best logits are enough (0.6 ms a 1024^2 block)
    return index.to(torch.uint8 if channels <= 256 else torch.int32)


def check_finite(logits: torch.Tensor, t: Block) -> None:
    """Raise :class:`EngineError` when ``logits`` (block ``t``'s) hold a NaN or an infinity.

    argmax takes a NaN channel as the best one: a model whose output overflowed (fp16 autocast on a
    GPU) or whose weights went NaN labelled every such pixel with one class and the run looked
    complete. One reduction: NaN or inf anywhere makes the sum non-finite.
    """
    if not bool(torch.isfinite(logits.sum())):
        raise EngineError(
            f"the model returned NaN or infinite logits in block {tuple(int(i) for i in t)}: its output overflowed (float16 autocast on a "
            "GPU without bfloat16) or its weights or input hold NaN/inf; --device cpu runs in float32 and tells which"
        )


def block_output(summed: np.ndarray, config: EngineConfig, class_ids: np.ndarray | None) -> np.ndarray:
    """The host half of :func:`finalize_block`: class indices ``(*block)`` -> label ids in the label dtype
    (mean logits ``(K, *block)`` pass unchanged)."""
    if config.output == "logits":
        return summed
    if class_ids is None or (len(class_ids) and class_ids[0] == 0 and np.array_equal(class_ids, np.arange(len(class_ids)))):
        return summed.astype(config.label_dtype, copy=False)  # no ids given: label i is logit channel i
    return class_ids[summed].astype(config.label_dtype, copy=False)


def write_block(plan: BlockPlan, t: Block, result: np.ndarray, out: Any, done: Any | None) -> None:
    """Write one finalised block (whole chunks) into ``out`` (labels ``(*spatial)`` or logits
    ``(K, *spatial)``), then record it as done in ``done`` (uint8, shaped like the block grid)."""
    key = plan.slices(t) if result.ndim == len(t) else (slice(None), *plan.slices(t))
    out[key] = result
    if done is not None:
        done[tuple(slice(i, i + 1) for i in t)] = np.ones((1,) * len(t), dtype=np.uint8)


def _with_chunk_cache(source: ArraySource) -> ArraySource:
    """A chunked source (zarr) read through :class:`ChunkCache`; anything else as it is.

    The cache holds two rows of a strip's chunks (:meth:`BlockPlan.order`): a block's region
    reaches into the next row of chunks, which the blocks of that row read again a strip later.
    """
    chunks = getattr(source, "chunks", None)
    if chunks and all(isinstance(c, int) for c in chunks) and chunks[0] == source.shape[0]:
        return ChunkCache(source, capacity=2 * STRIP_BLOCKS + 4)
    return source


def plan_for(source_shape: tuple[int, ...], config: EngineConfig) -> BlockPlan:
    """The block plan the engine uses for a source of shape ``(C, *spatial)``."""
    spatial = tuple(int(s) for s in source_shape[1:])
    if len(spatial) != len(config.window):
        raise EngineError(f"source has {len(spatial)} spatial axes {spatial}, window {config.window} has {len(config.window)}")
    return BlockPlan.build(WindowGrid(spatial, tuple(config.window), config.overlap), config.block_for(spatial))


def check_output(out: Any, plan: BlockPlan, config: EngineConfig, n_classes: int | None) -> None:
    """Refuse an ``out`` array the engine cannot fill block by block: labels must be shaped
    ``(*spatial)`` with chunks ``== plan.block``, logits ``(K, *spatial)`` with chunks ``(K, *block)``.

    Raises:
        EngineError: the shape or the chunks differ.
    """
    spatial = plan.grid.shape
    if config.output == "labels":
        expected_shape, expected_chunks = spatial, plan.block
    else:
        k = n_classes if n_classes is not None else out.shape[0]
        expected_shape, expected_chunks = (k, *spatial), (k, *plan.block)
    if tuple(out.shape) != tuple(expected_shape):
        raise EngineError(f"output array shape {tuple(out.shape)} != expected {tuple(expected_shape)}")
    chunks = getattr(out, "chunks", None)
    if chunks is not None and tuple(chunks) != tuple(expected_chunks):
        raise EngineError(f"output chunks {tuple(chunks)} != block {tuple(expected_chunks)}: each block must be whole chunks")


def check_valid(valid: ArraySource | None, plan: BlockPlan, config: EngineConfig) -> None:
    """``valid`` must have the image's spatial shape, and only labels can leave windows out (mean
    logits would be 0/0 where no window ran)."""
    if valid is None:
        return
    if tuple(valid.shape) != plan.grid.shape:
        raise EngineError(f"valid mask shape {tuple(valid.shape)} != image {plan.grid.shape}")
    if config.output != "labels":
        raise EngineError("a valid mask (windows without data left out) needs output='labels'")


def class_table(config: EngineConfig) -> np.ndarray | None:
    """``config.class_ids`` as an int64 lookup table (logit channel -> label value), or None when not given.

    Raises:
        EngineError: an id does not fit ``config.label_dtype``.
    """
    if config.class_ids is None:
        return None
    ids = np.asarray(config.class_ids, dtype=np.int64)
    info = np.iinfo(np.dtype(config.label_dtype)) if config.output == "labels" else None
    if info is not None and (ids.max() > info.max or ids.min() < info.min):
        raise EngineError(f"class ids up to {ids.max()} do not fit label dtype {config.label_dtype}; use uint16")
    return ids


def finished_blocks(done: Any | None, plan: BlockPlan) -> np.ndarray:
    """The blocks already finished (bool, shaped like the block grid): ``done``'s marks, or none.

    Raises:
        EngineError: ``done`` is not shaped like the block grid.
    """
    if done is None:
        return np.zeros(plan.shape, dtype=bool)
    if tuple(done.shape) != plan.shape:
        raise EngineError(f"done array shape {tuple(done.shape)} != block grid {plan.shape}")
    return np.asarray(done[...], dtype=bool)


BlockRead = tuple[Staged | None, list[tuple[int, ...]]]  # a block's staged region (None: no window has data) and windows to run


class _ReadAhead:
    """The read regions of the blocks to compute, read in their order on the reader threads, at
    most ``ahead + 1`` reads in flight beyond the block the main thread is running. A read gives
    the staged region (None when no window of the block has data) and the windows to run."""

    def __init__(self, readers: ThreadPoolExecutor, read: Callable[[Block], BlockRead], blocks: list[Block], ahead: int) -> None:
        self._readers, self._read, self._blocks, self._ahead = readers, read, blocks, ahead
        self._reads: dict[Block, Future] = {}
        self._next = 0

    def schedule(self) -> None:
        """Submit the next blocks' reads until the read-ahead is full (or no block is left)."""
        while self._next < len(self._blocks) and len(self._reads) <= self._ahead:
            b = self._blocks[self._next]
            self._reads[b] = self._readers.submit(self._read, b)
            self._next += 1

    def take(self, b: Block) -> BlockRead:
        """Block ``b``'s read, once it has finished (it must have been scheduled)."""
        return self._reads.pop(b).result()


def run_engine(
    source: ArraySource,
    model: Callable[[torch.Tensor], torch.Tensor],
    config: EngineConfig,
    out: Any,
    *,
    done: Any | None = None,
    preprocess: Preprocess | None = None,
    progress: Callable[[int, int], None] | None = None,
    valid: ArraySource | None = None,
) -> EngineReport:
    """Segment ``source`` ``(C, *spatial)`` into ``out`` block by block; see the module docstring.

    ``done`` (uint8 array shaped like the block grid, one chunk per element) records finished
    blocks: blocks already marked are skipped, and windows are only run for blocks that still feed
    an unfinished block, so a killed run resumes without redoing finished work.

    ``valid`` (``output="labels"`` only): ``(*spatial)``, nonzero where the image has data. Windows
    over nodata only are not run (a scene's nodata collar: ~28 % of the windows of a Landsat
    scene's rotated footprint); valid pixels get exactly the labels of a run without ``valid``, and
    pixels that no run window covers get ``class_ids[0]``: the caller masks nodata afterwards.
    """
    started = time.perf_counter()
    plan = plan_for(source.shape, config)
    grid = plan.grid
    class_ids = class_table(config)
    check_output(out, plan, config, None if class_ids is None else len(class_ids))
    check_valid(valid, plan, config)
    finished = finished_blocks(done, plan)

    device = auto_device(config.device)
    # reused buffers: each block's own piece is finalised in the same step, before the next block runs
    runner = WindowRunner(model, config, device, reuse_buffers=True)
    n_readers = config.reader_threads(device)
    ahead = max(config.prefetch, n_readers)
    staging = RegionStaging(device, keep=ahead + 2)  # blocks read ahead + the one running
    reader_source = _with_chunk_cache(source)
    sums = Workspace(device)
    order = plan.order()
    rank = {b: i for i, b in enumerate(order)}  # which waiting pieces are needed last (they go to disk first)
    needs_compute = {b for b in order if any(not finished[t] for t in plan.targets(b))}
    to_compute = [b for b in order if b in needs_compute]
    report = EngineReport(windows_total=grid.n_windows, blocks_total=plan.n_blocks, blocks_skipped=int(finished.sum()))

    blocks_done = int(finished.sum())
    read_seconds = [0.0]
    write_seconds = [0.0]
    main_timer = SpanTimer(device)  # compute and finalize on the main thread; minus the model = stitching

    def read(b: Block) -> BlockRead:
        t0 = time.perf_counter()
        starts = windows_with_data(plan, b, valid)
        staged = None
        if starts:
            lo, hi = region_of(plan, b)
            region = read_region(reader_source, lo, hi, preprocess, channels_last=runner.channels_last, pool=staging.host_buffers)
            staged = staging.send(region)  # on a GPU: copied on the reader's stream, off the main thread
        read_seconds[0] += time.perf_counter() - t0  # summed over the reader threads
        return staged, starts

    def write(t: Block, summed: Fetched) -> None:
        t0 = time.perf_counter()
        write_block(plan, t, block_output(summed.wait(), config, class_ids), out, done)
        write_seconds[0] += time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=n_readers, thread_name_prefix="segpipe-read") as readers, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="segpipe-write"
    ) as writers, PendingPieces(config.pending_bytes(device), rank=rank.__getitem__) as pending:
        reads = _ReadAhead(readers, read, to_compute, ahead)
        writes: list[Future] = []
        for b in order:
            check_stop()  # a stop request (SIGTERM, a cancelled flow run) ends the run between blocks: pipeline/stop.py
            if b in needs_compute:
                reads.schedule()
                staged, starts = reads.take(b)
                reads.schedule()
                pieces = []
                if staged is not None:
                    region = staging.receive(staged)
                    with main_timer.span():
                        pieces = compute_block(plan, b, region, runner, starts)
                    staging.release(region)
                for piece in pieces:
                    if not finished[piece.target]:
                        pending.add(piece)
                report.windows_run += len(starts)
                report.blocks_run += 1
            if not finished[b]:
                pieces = pending.pop(b)
                with main_timer.span():
                    summed = sum_block(plan, b, pieces, config, sums)
                # on a GPU the copy back starts here and the writer waits for it: the main thread
                # goes on queueing the next block's work instead of waiting for this one
                writes.append(writers.submit(write, b, fetch(summed)))
                if len(writes) > 4:
                    writes.pop(0).result()
                blocks_done += 1
                if progress is not None:
                    progress(blocks_done, plan.n_blocks)
        for fut in writes:
            fut.result()
        report.pieces_on_disk = pending.pieces_on_disk
        report.peak_pending_bytes = pending.peak_bytes_in_memory
    report.seconds = time.perf_counter() - started
    report.seconds_model = runner.seconds_model
    report.seconds_stitch = max(0.0, main_timer.total() - report.seconds_model)
    report.seconds_read = read_seconds[0]
    report.seconds_write = write_seconds[0]
    log.info(
        "engine: %d/%d windows, %d blocks run, %d skipped, %.2fs (model %.2fs)",
        report.windows_run, report.windows_total, report.blocks_run, report.blocks_skipped, report.seconds, report.seconds_model,
    )
    return report
