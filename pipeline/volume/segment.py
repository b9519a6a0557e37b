"""The labels of one study: the engine on the model grid, resumable from the study's work folder.

The engine's output and finished-block arrays live in ``DIR/.segpipe-work/S/`` with a copy of the
model-grid image; they are reopened for a resume while everything the labels depend on (input, model,
engine settings, model grid: their fingerprint) is unchanged, else made afresh. The labels come back
on the input's native grid with ``spec.nodata`` at the volume's nodata voxels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models.spec import ModelSpec
from pipeline.resume import forget_damaged_blocks
from pipeline.volume.options import VolumeOptions
from pipeline.volume.preprocess import (
    GridMapping,
    intensity_for,
    labels_to_native,
    logits_to_native,
    plan_grid,
    reorient,
    to_model,
)
from pipeline.volume.store import write_volume_store
from pipeline.volume.volume import Volume
from pipeline.volume.writers import label_dtype
from pipeline.zarr_write import fast_writes

log = logging.getLogger(__name__)

BlockProgress = Callable[[int, int], None]


def labels_on_native_grid(
    volume: Volume, spec: ModelSpec, work: Path, model: Any, options: VolumeOptions, *, progress: BlockProgress | None, record: dict[str, Any]
) -> tuple[np.ndarray, Any]:
    """Run the engine on the model grid (resuming from ``work``) and return native labels ``(Z, Y, X)``,
    ``spec.nodata`` at the volume's nodata voxels."""
    from pipeline.engine import EngineConfig, run_engine
    from pipeline.grid import BlockPlan, WindowGrid

    grid = plan_grid(volume.shape, volume.affine, orientation=spec.orientation, spacing=spec.spacing)
    dtype = label_dtype(spec.class_ids, spec.nodata)
    config = EngineConfig(
        window=tuple(spec.window), overlap=spec.overlap, blend=spec.blend, block=options.block,
        device=options.device, output="logits" if grid.resampled else "labels", class_ids=spec.class_ids, label_dtype=dtype,
    )
    blk = config.block_for(grid.model_shape)
    if options.block is not None:  # a block beyond the image is one block: zarr would allocate all of it (--block 4000: 59.6 GiB)
        blk = tuple(min(b, s) for b, s in zip(blk, grid.model_shape))
    config = dataclasses.replace(config, block=blk)
    plan = BlockPlan.build(WindowGrid(grid.model_shape, config.window, config.overlap), blk)
    work.mkdir(parents=True, exist_ok=True)
    image = to_model(volume.data, grid)
    fingerprint = _fingerprint(volume, spec, grid, config, record)
    out, done = _resumable_outputs(work, fingerprint, grid, config, plan.shape)
    # The study is in memory already, so the engine reads the model-grid image from there; its zarr
    # copy (chunked on the engine's blocks, with the affine) is written on a background thread
    # meanwhile: encoding and decoding it on the engine's path cost ~2.5 s per 512x512x300 CT.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segpipe-store") as background:
        stored = background.submit(
            write_volume_store, image, work / "source.zarr", affine=grid.model_affine, block=blk,
            attrs={"source": str(volume.source), "modality": volume.modality},
        )
        preprocess = intensity_for(spec, volume.data, nodata=volume.nodata)
        # windows over nodata only (DICOM pixel padding, NaN) are left out; not across a resampling,
        # where the logits of voxels next to the data are interpolated into it
        valid = None if volume.nodata is None or grid.resampled else ~reorient(volume.nodata, grid)
        report = run_engine(image[None], model, config, out, done=done, preprocess=preprocess, progress=progress, valid=valid)
        stored.result()
    if grid.resampled:
        labels = logits_to_native(out, grid, spec.class_ids, dtype)
    else:
        labels = labels_to_native(out[...], grid)
    labels = np.require(labels, requirements=("C", "W"))
    if volume.nodata is not None:
        labels[volume.nodata] = spec.nodata  # on the native grid: exact whatever the model grid was
    return labels, report


def _fingerprint(volume: Volume, spec: ModelSpec, grid: GridMapping, config: Any, record: dict[str, Any]) -> dict[str, Any]:
    stat = Path(volume.source).stat()
    checkpoint = spec.checkpoint
    return {
        "source": str(volume.source),
        "source_mtime_ns": stat.st_mtime_ns,
        "dicom_series": None if volume.dicom is None else [volume.dicom.series_uid, *volume.dicom.sop_instance_uids],
        "model": spec.name,
        "checkpoint_mtime_ns": checkpoint.stat().st_mtime_ns if checkpoint is not None and checkpoint.exists() else None,
        "classes": list(spec.class_ids),
        "window": list(config.window),
        "overlap": config.overlap,
        "blend": config.blend,
        "block": list(config.block),
        "output": config.output,
        "dtype": config.label_dtype,
        "model_shape": list(grid.model_shape),
        "model_affine": np.asarray(grid.model_affine).round(6).tolist(),
        "normalize": repr(spec.normalize),
        "made_with": record,
    }


def _resumable_outputs(work: Path, fingerprint: dict[str, Any], grid: GridMapping, config: Any, block_grid: tuple[int, ...]):
    """The engine's output and ``done`` arrays: reopened when the fingerprint matches, else created."""
    import zarr

    out_path, done_path = work / "out.zarr", work / "done.zarr"
    try:
        out = zarr.open_array(store=str(out_path), mode="r+")
        done = zarr.open_array(store=str(done_path), mode="r+")
        if out.attrs.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            out, done = fast_writes(out), fast_writes(done)
            forget_damaged_blocks(out, done, what=str(work))  # a finished block's lost chunk is not read back as label 0
            log.info("%s: resuming, %d of %d blocks already done", work.name, int(np.count_nonzero(done[...])), done.size)
            return out, done
    except (FileNotFoundError, ValueError, KeyError, OSError):
        pass
    blk = tuple(config.block)
    if config.output == "labels":
        out = zarr.create_array(store=str(out_path), shape=grid.model_shape, chunks=blk, dtype=config.label_dtype, zarr_format=3, overwrite=True)
    else:
        k = len(config.class_ids)
        out = zarr.create_array(store=str(out_path), shape=(k, *grid.model_shape), chunks=(k, *blk), dtype="float32", zarr_format=3, overwrite=True)
    done = zarr.create_array(store=str(done_path), shape=block_grid, chunks=(1,) * len(block_grid), dtype="uint8", zarr_format=3, overwrite=True, fill_value=0)
    out.attrs["fingerprint"] = fingerprint
    return fast_writes(out), fast_writes(done)
