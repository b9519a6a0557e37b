"""The labels of one scene in its work store: the engine run over the ingested image.

The labels and the engine's finished-block record live in ``out_dir/.work/<stem>.zarr`` next to the
ingested image (:mod:`pipeline.raster.ingest`); they are kept for a resume while the model, the
normalisation, the bands and the block layout they were made with (their fingerprint) stay the same.
Blocks without a single valid pixel are recorded as finished without running the model.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.spec import ModelSpec
from pipeline.known_warnings import known_warnings_ignored
from pipeline.raster.ingest import band_stats, every_pixel_valid
from pipeline.raster.probe import RasterInfo
from pipeline.resume import forget_damaged_blocks
from pipeline.zarr_write import fast_writes

log = logging.getLogger(__name__)

LABELS_ATTR = "segpipe_labels"


def _fingerprint(spec: ModelSpec, info: RasterInfo, block: int, label_dtype: str, fill: tuple[float, ...]) -> dict[str, Any]:
    """What the labels in the work store depend on; a mismatch discards them. (The ingested pixels
    and masks are the work store's own: a changed input or ingest layout re-ingests it, labels included.)"""
    ckpt = spec.checkpoint
    stat = ckpt.stat() if ckpt is not None and Path(ckpt).is_file() else None
    return {
        "model": spec.name,
        "architecture": spec.architecture,
        "params": json.loads(json.dumps(spec.params, default=str)),
        "checkpoint": None if ckpt is None else str(ckpt),
        "checkpoint_stat": None if stat is None else [stat.st_size, stat.st_mtime_ns],
        "window": list(spec.window),
        "overlap": spec.overlap,
        "blend": spec.blend,
        "normalize": repr(spec.normalize),
        "class_ids": list(spec.class_ids),
        "bands": list(info.bands),
        "block": block,
        "dtype": label_dtype,
        "nodata_fill": list(fill),  # what the model saw at invalid values (pipeline.raster.fill)
    }


def _label_arrays(work: Path, fingerprint: dict[str, Any], shape: tuple[int, int], block: int, grid: tuple[int, int], dtype: str):
    """The ``labels`` and ``labels_done`` arrays of the work store, reused when the fingerprint matches."""
    import zarr

    group = zarr.open_group(work, mode="r+", use_consolidated=False)
    try:
        if group.attrs.get(LABELS_ATTR) == fingerprint and "labels" in group and "labels_done" in group:
            return fast_writes(group["labels"]), fast_writes(group["labels_done"])
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for damaged metadata (a crash's leftover)
        log.warning("%s: the labels of an interrupted run do not open (%s: %s); segmenting the scene again", work, type(exc).__name__, exc)
    labels = group.create_array("labels", shape=shape, chunks=(block, block), dtype=dtype, fill_value=0, dimension_names=("y", "x"), overwrite=True)
    done = group.create_array("labels_done", shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0, dimension_names=("block_y", "block_x"), overwrite=True)
    group.attrs[LABELS_ATTR] = fingerprint
    with known_warnings_ignored():
        zarr.consolidate_metadata(work)
    return fast_writes(labels), fast_writes(done)


def _preprocess(spec: ModelSpec, work: Path, channels: int):
    """The spec's normaliser and, per band, the raw value it maps to 0: what invalid values are read as."""
    from models.normalize import NormStats, neutral_values, normalizer

    stats = None
    if spec.normalize.kind == "zscore":  # over each band's valid values (band_mask)
        raw = band_stats(work)
        stats = NormStats(tuple(raw["mean"]), tuple(s if s > 0 else 1.0 for s in raw["std"]))
    return normalizer(spec.normalize, stats), neutral_values(spec.normalize, channels, stats)


def segment_work_store(work: Path, spec: ModelSpec, info: RasterInfo, *, block: int, device: str, label_dtype: str, model: Any, dask_client: Any, progress):
    import zarr

    from pipeline.engine import EngineConfig, auto_device, plan_for, run_engine

    config = EngineConfig(
        window=tuple(spec.window), overlap=spec.overlap, blend=spec.blend, block=(block, block), device=device,
        output="labels", class_ids=tuple(spec.class_ids), label_dtype=label_dtype,
    )
    image = zarr.open_group(work, mode="r", use_consolidated=False)["image"]
    grid = plan_for(tuple(image.shape), config).shape
    preprocess, fill = _preprocess(spec, work, info.count)
    labels, done = _label_arrays(work, _fingerprint(spec, info, block, label_dtype, fill), info.shape, block, grid, label_dtype)
    empty = empty_blocks(work, grid, block)
    forget_damaged_blocks(labels, done, ignore=empty, what=str(work))  # a finished block's lost labels are not read back as class 0
    skipped = mark_empty_blocks(work, done, block, empty=empty)
    if skipped:
        log.info("%s: %d of %d blocks hold no valid pixel; the model skips them", info.path, skipped, done.size)
    filled = not every_pixel_valid(work)  # the model sees the neutral value, not the raw nodata (pipeline.raster.fill)
    if dask_client is not None:
        from pipeline.distributed import ZarrRef, run_engine_dask
        from pipeline.raster.fill import FilledRef

        store = str(work.resolve())
        source = FilledRef(store, fill) if filled else ZarrRef(store, "image")
        if model is not None:
            factory = functools.partial(_given_model, model)
        else:
            from models.checkpoint import load_model

            factory = functools.partial(load_model, spec, device)
        key = f"{spec.name}-{device}-{id(model) if model is not None else spec.checkpoint}"
        return run_engine_dask(
            dask_client, source, key, factory, config, ZarrRef(store, "labels"),
            done=ZarrRef(store, "labels_done"), preprocess=preprocess, progress=progress, valid=ZarrRef(store, "mask") if filled else None,
        )
    if hasattr(model, "to") and hasattr(model, "eval"):
        model = model.to(auto_device(device)).eval()
    valid = None
    if filled:
        from pipeline.raster.fill import open_filled

        image = open_filled(work, fill)
        valid = zarr.open_group(work, mode="r", use_consolidated=False)["mask"]  # windows over nodata only are left out
    return run_engine(image, model, config, labels, done=done, preprocess=preprocess, progress=progress, valid=valid)


def empty_blocks(work: Path, grid: tuple[int, int], block: int) -> np.ndarray | None:
    """Bool ``(by, bx)``: the blocks of the block grid ``grid`` without a single valid pixel; None when every pixel is valid."""
    import zarr

    if every_pixel_valid(work):
        return None
    mask = zarr.open_group(work, mode="r", use_consolidated=False)["mask"]
    empty = np.zeros(grid, dtype=bool)
    for by, bx in np.ndindex(*grid):
        empty[by, bx] = not np.asarray(mask[by * block : (by + 1) * block, bx * block : (bx + 1) * block]).any()
    return empty


def mark_empty_blocks(work: Path, done: Any, block: int, *, empty: np.ndarray | None = None) -> int:
    """Record the blocks without a single valid pixel as finished in ``done`` (block grid ``(by, bx)``).

    Their labels are never seen (the COG writes nodata and the statistics count nodata wherever the
    mask is False), so the engine need not run the model there: it only runs windows that feed an
    unfinished block. A mostly-nodata scene (a swath in a large grid, a wide collar) then costs its
    valid area, not its bounding box. Valid blocks get the same labels as before: every window that
    touches them still runs. ``empty``: :func:`empty_blocks`, when the caller has it. Returns the
    number of empty blocks.
    """
    if empty is None:
        empty = empty_blocks(work, tuple(done.shape), block)
    if empty is None:
        return 0
    finished = np.asarray(done[...], dtype=bool)
    for by, bx in zip(*np.nonzero(empty & ~finished)):
        done[by : by + 1, bx : bx + 1] = np.ones((1, 1), dtype=np.uint8)
    return int(empty.sum())


def _given_model(model: Any) -> Any:
    return model.eval() if hasattr(model, "eval") else model

