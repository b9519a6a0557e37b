"""Run the engine's blocks on a Dask cluster (``--dask-address``, or a ``LocalCluster``).

Same plan, same pieces, same summation order as :func:`pipeline.engine.run_engine`, so labels are
bit-identical to a local run. Each block becomes two tasks: ``compute`` (run the windows anchored
in the block; returns its pieces) and ``finalize`` (sum the pieces landing in the block, write its
zarr chunk, mark it done). The source and output are zarr arrays on storage every worker can reach,
passed by reference. The model is built once per worker process by a :class:`ModelPlugin`.
GPU work is annotated ``resources={"GPU": 1}`` when the workers declare GPUs.
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
from pipeline.zarr_write import fast_writes

log = logging.getLogger(__name__)

ModelFactory = Callable[[], torch.nn.Module]
PLUGIN_NAME = "segpipe-model"


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
    from distributed import as_completed

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
    for b in plan.order():
        wanted = frozenset(t for t in plan.targets(b) if not finished[t])
        if wanted:
            computes[b] = client.submit(
                _compute_task, source, config, model_key, model_factory, preprocess, b, wanted, valid,
                key=f"segpipe-compute-{'-'.join(map(str, b))}-{id(report)}", resources=resources, pure=False,
            )
            report.windows_run += len(plan.windows(b))
            report.blocks_run += 1
    finals = [
        client.submit(
            _finalize_task, shape, config, out, done, t, *[computes[s] for s in plan.sources(t)],
            key=f"segpipe-finalize-{'-'.join(map(str, t))}-{id(report)}", pure=False,
        )
        for t in plan.order()
        if not finished[t]
    ]
    del computes  # the scheduler keeps each compute result until its last finalize has run
    blocks_done = report.blocks_skipped
    for future in as_completed(finals):
        future.result()
        blocks_done += 1
        if progress is not None:
            progress(blocks_done, plan.n_blocks)
    report.seconds = time.perf_counter() - started
    return report
