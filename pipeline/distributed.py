"""Run the engine's blocks on a Dask cluster (``--dask-address``, or a ``LocalCluster``).

Same plan, same pieces, same summation order as :func:`pipeline.engine.run_engine`, so labels are
bit-identical to a local run. Each block becomes two tasks: ``compute`` (run the windows anchored
in the block; returns its pieces) and ``finalize`` (sum the pieces landing in the block, write its
zarr chunk, mark it done). The source and output are zarr arrays on storage every worker can reach,
passed by reference. The model is built once per worker process by a :class:`ModelPlugin`.
GPU work is annotated ``resources={"GPU": 1}`` when the workers declare GPUs.

A run that stops (SIGTERM, Ctrl-C, a cancelled flow run: :mod:`pipeline.stop`) or fails cancels its
tasks on the cluster (:func:`cancel_blocks`): queued blocks are dropped and the workers are free at
once; a compute task already running stops at its next window batch (it sees its key cancelled); a
finalize task already running writes its whole chunk and done mark, which a rerun skips or writes
again with the same bytes. A client that is killed outright cannot cancel: the scheduler releases
the tasks of a client whose connection closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import torch
import zarr
from distributed import WorkerPlugin

from pipeline.engine import (
    EngineConfig,
    EngineReport,
    Preprocess,
    WindowRunner,
    auto_device,
    check_output,
    check_valid,
    class_table,
    compute_block,
    finalize_block,
    finished_blocks,
    plan_for,
    read_region,
    region_of,
    windows_with_data,
    write_block,
)
from pipeline.engine_types import Block, Piece
from pipeline.grid import BlockPlan
from pipeline.stop import check_stop, wait_for_stop
from pipeline.zarr_write import fast_writes

log = logging.getLogger(__name__)

ModelFactory = Callable[[], torch.nn.Module]
PLUGIN_NAME = "segpipe-model"
STOP_POLL_S = 0.1
"""Seconds between checks for a stop request while the blocks run on the cluster."""


@dataclass(frozen=True)
class ZarrRef:
    """A zarr array by location: ``store`` (path or URL every worker can open) and ``path`` inside it."""

    store: str
    path: str

    def open(self, mode: str = "r") -> zarr.Array:
        array = zarr.open_array(self.store, path=self.path, mode=mode)
        return array if mode == "r" else fast_writes(array)


class SourceRef(Protocol):
    """A picklable reference to the engine's source that every worker opens: ``open()`` returns the
    ``(C, *spatial)`` array (a :class:`ZarrRef`, or a view of one such as
    :class:`pipeline.raster.fill.FilledRef`, the image with nodata read as neutral values)."""

    def open(self) -> Any: ...


_MODELS: dict[str, torch.nn.Module] = {}


class ModelPlugin(WorkerPlugin):
    """Dask worker plugin: builds the model once per worker process, on the worker's device."""

    def __init__(self, key: str, factory: ModelFactory) -> None:
        self.name = f"{PLUGIN_NAME}-{key}"
        self.key = key
        self.factory = factory

    def setup(self, worker: Any) -> None:
        worker_model(self.key, self.factory)

    def teardown(self, worker: Any) -> None:
        _MODELS.pop(self.key, None)


def worker_model(key: str, factory: ModelFactory) -> torch.nn.Module:
    """The model cached in this process under ``key``, built by ``factory`` on first use."""
    if key not in _MODELS:
        _MODELS[key] = factory()
        log.info("built model %s in worker process", key)
    return _MODELS[key]


@lru_cache(maxsize=8)
def _plan(source_shape: tuple[int, ...], config: EngineConfig) -> BlockPlan:
    return plan_for(source_shape, config)


def _compute_task(
    source: SourceRef, config: EngineConfig, key: str, factory: ModelFactory, preprocess: Preprocess | None,
    b: Block, wanted: frozenset[Block], valid: SourceRef | None = None,
) -> list[Piece]:
    array = source.open()
    plan = _plan(tuple(array.shape), config)
    starts = windows_with_data(plan, b, None if valid is None else valid.open())
    if not starts:
        return []
    lo, hi = region_of(plan, b)
    runner = WindowRunner(worker_model(key, factory), config, auto_device(config.device))
    region = read_region(array, lo, hi, preprocess, channels_last=runner.channels_last)
    return [p.on_host() for p in compute_block(plan, b, region, runner, starts) if p.target in wanted]


def _finalize_task(
    source_shape: tuple[int, ...], config: EngineConfig, out: ZarrRef, done: ZarrRef | None, t: Block,
    *piece_lists: list[Piece],
) -> Block:
    plan = _plan(source_shape, config)
    pieces = [p for pieces in piece_lists for p in pieces if p.target == t]
    result = finalize_block(plan, t, pieces, config, class_table(config))
    write_block(plan, t, result, out.open("r+"), None if done is None else done.open("r+"))
    return t


def run_engine_dask(
    client: Any,
    source: SourceRef,
    model_key: str,
    model_factory: ModelFactory,
    config: EngineConfig,
    out: ZarrRef,
    *,
    done: ZarrRef | None = None,
    preprocess: Preprocess | None = None,
    progress: Callable[[int, int], None] | None = None,
    valid: SourceRef | None = None,
) -> EngineReport:
    """Like :func:`pipeline.engine.run_engine`, with blocks as tasks on the Dask ``client``'s cluster.

    Args:
        client: a ``distributed.Client``.
        source: reference to the ``(C, *spatial)`` source every worker reads (a :class:`ZarrRef` or another :class:`SourceRef`).
        model_key: names the model in the per-worker cache (e.g. the spec path and device).
        model_factory: picklable callable building the model on a worker.
        out, done: zarr arrays as for the local engine, writable from every worker.
        valid: reference to the ``(*spatial)`` mask of pixels with data, as ``run_engine``'s ``valid``:
            the workers leave out windows over nodata only. ``windows_run`` then counts the windows
            scheduled, not those run (the workers decide).
    """
    started = time.perf_counter()
    array = source.open()
    shape = tuple(int(s) for s in array.shape)
    plan = _plan(shape, config)
    ids = class_table(config)
    check_output(out.open(), plan, config, None if ids is None else len(ids))
    check_valid(None if valid is None else valid.open(), plan, config)
    finished = finished_blocks(None if done is None else done.open(), plan)
    report = EngineReport(windows_total=plan.grid.n_windows, blocks_total=plan.n_blocks, blocks_skipped=int(finished.sum()))

    client.register_plugin(ModelPlugin(model_key, model_factory))
    gpu_workers = any(w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values())
    resources = {"GPU": 1} if gpu_workers and auto_device(config.device).type == "cuda" else None

    computes: dict[Block, Any] = {}
    finals: list[Any] = []
    try:
        for b in plan.order():
            check_stop()  # a scene of 100,000 blocks takes a while to submit
            wanted = frozenset(t for t in plan.targets(b) if not finished[t])
            if wanted:
                computes[b] = client.submit(
                    _compute_task, source, config, model_key, model_factory, preprocess, b, wanted, valid,
                    key=f"segpipe-compute-{'-'.join(map(str, b))}-{id(report)}", resources=resources, pure=False,
                )
                report.windows_run += len(plan.windows(b))
                report.blocks_run += 1
        for t in plan.order():
            if not finished[t]:
                finals.append(client.submit(
                    _finalize_task, shape, config, out, done, t, *[computes[s] for s in plan.sources(t)],
                    key=f"segpipe-finalize-{'-'.join(map(str, t))}-{id(report)}", pure=False,
                ))
        computes.clear()  # the scheduler keeps each compute result until its last finalize has run
        _wait_for_blocks(finals, report.blocks_skipped, plan.n_blocks, progress)
    except BaseException:
        # stopped (SIGTERM, Ctrl-C, a cancelled flow run) or failed: drop this run's blocks from the cluster
        cancel_blocks(client, [*computes.values(), *finals])
        raise
    report.seconds = time.perf_counter() - started
    return report


def _wait_for_blocks(finals: list[Any], blocks_done: int, n_blocks: int, progress: Callable[[int, int], None] | None) -> None:
    """Wait for the finalize tasks, raising the first failure; a stop request (:mod:`pipeline.stop`)
    is seen within :data:`STOP_POLL_S` on any thread, not only at a block's end."""
    from distributed import as_completed

    pending = as_completed(finals)
    while not pending.is_empty():
        check_stop()
        batch = pending.next_batch(block=False)
        if not batch:
            wait_for_stop(STOP_POLL_S)
            continue
        for future in batch:
            future.result()
            blocks_done += 1
            if progress is not None:
                progress(blocks_done, n_blocks)


def cancel_blocks(client: Any, futures: list[Any]) -> None:
    """Cancel a stopped run's block tasks on the cluster: queued ones are dropped; a task already
    running on a worker cannot be interrupted by this process: a compute task stops at its next
    window batch (:func:`pipeline.stop.check_stop` sees its key cancelled), a finalize task writes
    its whole chunk and done mark (the bytes a rerun writes again). Never raises: the client may be
    gone already (then the scheduler drops the tasks of a client that disconnected)."""
    if not futures:
        return
    try:
        client.cancel(futures)
        log.info("cancelled %d block task(s) on the Dask cluster", len(futures))
    except Exception as exc:  # noqa: BLE001 - cleaning up after a stop or a failure: the first error is the one to raise
        log.warning("could not cancel %d block task(s) on the Dask cluster: %s", len(futures), exc)
