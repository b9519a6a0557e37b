"""One scene end to end: ingest -> engine -> label COG -> statistics -> quicklook.

Outputs in ``out_dir``: ``<stem>.labels.tif`` (+ ``.aux.xml`` with category names),
``<stem>.quicklook.png`` and the shared ``stats.zarr``. Working data lives in
``out_dir/.work/<stem>.zarr`` (the ingested image, the labels and the engine's finished-block
record): a killed run resumes from it, and it is removed after a successful run. One run at a time
segments a scene into a folder: it holds ``out_dir/.work/<stem>.lock`` (:mod:`pipeline.work_lock`)
from the ingest to the removal of the work store, and a second run fails at once; under the lock, a
work store that is not a readable zarr store (a crash's leftover) is removed. Every output is
written under a temporary name and renamed when complete, and inputs are validated (raster,
bands, regions) before anything is written.

The engine run over the work store is :mod:`pipeline.raster.segment`; the outputs are written by
:mod:`pipeline.raster.publish`.
"""

from __future__ import annotations

import logging
import shutil
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from models.spec import ModelSpec, load_spec
from pipeline.errors import InputError, ModelSpecError
from pipeline.memory import release_free_memory
from pipeline.outputs import check_stats_store, output_write_error, prepare_output_dir, remove_if_empty
from pipeline.raster.blocks import MAX_BLOCK
from pipeline.raster.cog import refuse_foreign_labels
from pipeline.raster.entries import check_store_accepts, entry_done, provenance_snapshot
from pipeline.raster.ingest import REMOTE_NOT_CACHED, ingest_raster
from pipeline.raster.object_version import object_version
from pipeline.raster.probe import RasterInfo, probe_raster, scene_stem
from pipeline.raster.provenance import Provenance, provenance_of, source_of
from pipeline.raster.publish import STATS_STORE, Entry, Progress, stage_progress, write_outputs
from pipeline.raster.regions import NoRegionInScene, Regions, read_regions, scene_region
from pipeline.raster.segment import segment_work_store
from pipeline.raster.stats import to_datetime64
from pipeline.stats_store import open_stats
from pipeline.timing import Stopwatch
from pipeline.work_lock import discard_unreadable_store, work_lock

log = logging.getLogger(__name__)

WORK_DIR = ".work"


@dataclass(frozen=True)
class RasterResult:
    """What one scene produced.

    Attributes:
        scene: the scene name (file stem), also its ``scene`` coordinate in ``stats.zarr``.
        labels_path, stats_path, quicklook_path: the outputs.
        info: the input raster's description.
        stats: this run's statistics (dims ``region``, ``class``); empty, and nothing added to
            ``stats_path``, when none of the ``regions`` meets the scene (a warning says so).
        engine: the engine's report (windows, blocks, seconds).
        seconds: wall time of the whole scene.
        timings: wall seconds per stage (load model, ingest, segment, cog, stats, quicklook).
        skipped: the scene was done already (:func:`~pipeline.raster.entries.entry_done`); nothing
            was written, ``stats`` is the stored entry and ``engine`` is empty.
    """

    scene: str
    labels_path: Path
    stats_path: Path
    quicklook_path: Path
    info: RasterInfo
    stats: xr.Dataset
    engine: Any
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False


GDAL_CACHE_BYTES = 256 * 2**20  # GDAL's block cache otherwise grows to 5 % of RAM with the image


def segment_raster(
    image: str | Path,
    spec: ModelSpec | str | Path,
    out_dir: str | Path,
    *,
    regions: str | Path | None = None,
    region_field: str | None = None,
    region_layer: str | None = None,
    block: int | None = None,
    device: str = "auto",
    bands: Sequence[int] | None = None,
    time: Any = None,
    progress: Progress | None = None,
    model: Any = None,
    dask_client: Any = None,
    keep_work: bool = False,
    force: bool = False,
) -> RasterResult:
    """Segment one raster scene and write its label COG, statistics and quicklook.

    Args:
        image: the raster (path or GDAL-readable URL).
        spec: a :class:`ModelSpec`, a catalog name or a YAML path (task ``raster``).
        out_dir: output folder (created).
        regions: polygons file for the statistics; None = one region ``scene``.
        region_field: attribute naming the regions (default ``name`` if present).
        region_layer: the regions file's layer (needed when it has several).
        block: block (zarr chunk) size in pixels; bounds memory. ``None``: :func:`default_block`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        bands: 1-based bands to feed the model (default all but alpha bands; their number must be ``in_channels``).
        time: run time for ``stats.zarr`` (default now, UTC).
        progress: optional ``callable(stage, done, total)``.
        model: a ready model (``(N, C, y, x) -> (N, K, y, x)``); default ``models.checkpoint.load_model(spec, device)``.
        dask_client: a ``distributed.Client`` to run the blocks on (the output folder must be
            reachable from its workers); None runs locally.
        keep_work: keep ``.work/<stem>.zarr`` after success (default: removed).
        force: replace the store's entry for this ``time`` and scene even when it was made from
            another input (see :mod:`pipeline.raster.entries`), and redo a scene already done.

    A scene whose entry for this ``time`` is in the store, made from the same input (size and
    modification time; a URL's ETag or Last-Modified and size, asked from its server), model,
    checkpoint, regions, region field and layer and bands, and whose label COG and quicklook exist,
    is skipped (``skipped=True``): a retried nightly run (same scheduled time) redoes only what it
    had not finished.

    Raises:
        InputError: bad raster, bands, regions or options, ``out_dir`` a file, ``out_dir/stats.zarr``
            holding volume statistics, an entry for this time and scene made from another input
            (without ``force``), or a model whose classes contradict the store's (all checked before
            any work; nothing is written).
        InputError: another run is segmenting this scene into ``out_dir`` (its lock is held); nothing is touched.
        InputError: ``out_dir/<stem>.labels.tif`` exists and segpipe did not write it (without ``force``).
        EngineError: ``device`` names a CUDA device this machine does not have (checked first).
        ModelSpecError, CheckpointError: bad model.
    """
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, **REMOTE_NOT_CACHED):  # a retry in this process reads a replaced object anew
        return _segment_raster(
            image, spec, out_dir, regions=regions, region_field=region_field, region_layer=region_layer, block=block, device=device, bands=bands,
            time=time, progress=progress, model=model, dask_client=dask_client, keep_work=keep_work, force=force,
        )


def default_block(device: str, *, distributed: bool = False) -> int:
    """Block edge in pixels: 1024 on CPU; 2048 on a GPU, where each block's fixed host-side cost
    (a few ms of Python and transfers) would otherwise idle the device and a block of 512^2 windows
    fills a batch of 16 (~30 windows, not ~7). Dask runs keep 1024 unless a GPU is named: the
    workers' devices are not known here."""
    from pipeline.windows import runs_on_gpu

    if distributed and device == "auto":
        return 1024
    return 2048 if runs_on_gpu(device) else 1024


def _segment_raster(
    image, spec, out_dir, *, regions, region_field, region_layer, block, device, bands, time, progress, model, dask_client, keep_work, force
) -> RasterResult:
    started = _time.perf_counter()
    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    if spec.task != "raster":
        raise ModelSpecError(spec.source or spec.name, f"task is '{spec.task}', not 'raster'", "use a raster (2D) model for `segpipe raster`")
    if region_field is not None and regions is None:
        raise InputError(str(region_field), "--region-field given without --regions", "add --regions FILE")
    if region_layer is not None and regions is None:
        raise InputError(str(region_layer), "--region-layer given without --regions", "add --regions FILE")
    run_time = to_datetime64(time)
    if dask_client is None:  # with Dask the device is the workers'
        check_device(device)
    block = block or default_block(device, distributed=dask_client is not None)
    if block > MAX_BLOCK:
        raise InputError(str(block), f"block of {block} pixels is larger than {MAX_BLOCK}", "use a block of 1024 (CPU) to 2048 (GPU) pixels")
    stem = scene_stem(image)
    out_dir = Path(out_dir)
    # validate everything before writing anything
    check_stats_store(out_dir / STATS_STORE, "raster")
    store = out_dir / STATS_STORE
    snapshot = provenance_snapshot(store) if (store / "zarr.json").is_file() else None  # one read (not of the areas) for both checks
    check_store_accepts(
        store, time=run_time, scene=stem, source=source_of(image), classes=[(c.id, c.name) for c in spec.classes], force=force, snapshot=snapshot
    )
    info = probe_raster(image, bands=bands, in_channels=spec.in_channels, model_name=spec.name)
    version = object_version(image)  # a URL's version on the server, asked once: the entry's provenance and the work store's signature
    provenance = provenance_of(image, spec, regions, region_field=region_field, region_layer=region_layer, bands=bands, version=version)
    block = min(block, max(info.shape))  # a block beyond the scene is one block: zarr would allocate all of it per chunk
    if not force:
        refuse_foreign_labels(out_dir / f"{stem}.labels.tif")
    if not force and snapshot is not None:
        done = _done_already(out_dir, stem, snapshot, run_time, provenance, info, started)
        if done is not None:
            if not keep_work:
                _remove_finished_work(out_dir, stem, image)
            return done
    region_set = _regions_for(regions, info, region_field, region_layer, stem)
    label_dtype = "uint8" if max(*spec.class_ids, spec.nodata) <= 255 else "uint16"
    work = out_dir / WORK_DIR / f"{stem}.zarr"
    created = [p for p in (*reversed(out_dir.parents), out_dir, out_dir / WORK_DIR) if not p.exists()]
    prepare_output_dir(out_dir)
    watch = Stopwatch()
    ingested = False  # from the ingest to the work store's removal: its disappearance is the output folder's doing
    try:
        with work_lock(out_dir / WORK_DIR, stem, subject=image, out_dir=out_dir, what="scene"):  # held until the work store is gone
            if model is None and dask_client is None:
                from models.checkpoint import load_model

                with watch.stage("load model"):
                    model = load_model(spec, device)
            discard_unreadable_store(work)
            with watch.stage("ingest"):
                info = ingest_raster(
                    image, work, block=block, bands=bands, in_channels=spec.in_channels, model_name=spec.name, progress=stage_progress(progress, "ingest"),
                    version=version,
                )
            ingested = True
            release_free_memory()  # the ingest's freed GDAL cache would otherwise add to the engine's peak
            with watch.stage("segment"):
                report = segment_work_store(
                    work, spec, info, block=block, device=device, label_dtype=label_dtype, model=model, dask_client=dask_client,
                    progress=stage_progress(progress, "segment"),
                )
            release_free_memory()
            entry = Entry(time=run_time, scene=stem, provenance=provenance, force=force)
            result = write_outputs(work, image, spec, info, region_set, out_dir, entry=entry, block=block, progress=progress, watch=watch)
            if not keep_work:
                ingested = False
                shutil.rmtree(work, ignore_errors=True)  # under the lock: no run of this scene is using it
    except BaseException as exc:
        for path in reversed(created):  # leave no empty folders behind a failed first run
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        error = output_write_error(out_dir, exc, writing=f"the outputs of {stem}") if isinstance(exc, OSError) else None
        if error is not None:  # a full disk or read-only --out met mid-run: the user's to fix, said so
            raise error from exc
        if ingested and isinstance(exc, Exception) and not (work / "zarr.json").is_file():  # was "unexpected GroupNotFoundError"
            raise InputError(
                out_dir, f"{work} disappeared while this run was writing it (the output folder or a parent was deleted or moved)",
                "keep --out in place until the run ends, then run again",
            ) from exc
        raise
    if not keep_work:
        remove_if_empty(out_dir / WORK_DIR)
    labels_path, stats_path, quicklook_path, stats = result
    return RasterResult(stem, labels_path, stats_path, quicklook_path, info, stats, report, _time.perf_counter() - started, watch.seconds)


def _done_already(
    out_dir: Path, stem: str, snapshot: xr.Dataset, run_time: np.datetime64, provenance: Provenance, info: RasterInfo, started: float
) -> RasterResult | None:
    """The skipped scene's :class:`RasterResult` when its work is done already (its entry in the
    statistics ``snapshot`` and its files), else None."""
    from pipeline.engine import EngineReport

    labels, quicklook, store = out_dir / f"{stem}.labels.tif", out_dir / f"{stem}.quicklook.png", out_dir / STATS_STORE
    if not (labels.is_file() and quicklook.is_file()):
        return None
    if not entry_done(snapshot, time=run_time, scene=stem, provenance=provenance):
        return None
    stats = open_stats(store, lambda ds: ds.sel(time=run_time, scene=stem))  # the entry's chunks only
    log.info("%s: done already for %s (same input, model and regions); skipped (force redoes it)", stem, np.datetime_as_string(run_time, unit="s"))
    return RasterResult(stem, labels, store, quicklook, info, stats, EngineReport(), _time.perf_counter() - started, skipped=True)


def _remove_finished_work(out_dir: Path, stem: str, image: Any) -> None:
    """Remove the work store of a scene that is done: a run killed after appending its statistics
    entry leaves it (the whole ingested image), and nothing resumes from it now. Under the scene's
    lock; a live run of the scene (``force``) holds it and keeps its store."""
    work = out_dir / WORK_DIR / f"{stem}.zarr"
    if not work.exists():
        return
    try:
        with work_lock(out_dir / WORK_DIR, stem, subject=image, out_dir=out_dir, what="scene"):
            log.info("%s: removing %s, left by a run interrupted after it finished", stem, work)
            shutil.rmtree(work, ignore_errors=True)
    except InputError:
        return
    remove_if_empty(out_dir / WORK_DIR)


def _regions_for(regions: str | Path | None, info: RasterInfo, field: str | None, layer: str | None, stem: str) -> Regions | None:
    """The regions the statistics are taken over; None (with a warning) when none of them meets the
    scene: a nightly catalog's tiles outside its districts still get their label maps."""
    if regions is None:
        return scene_region(info)
    try:
        return read_regions(regions, info, field=field, layer=layer)
    except NoRegionInScene as exc:
        log.warning("%s; %s is segmented without statistics", exc, stem)
        return None


def check_device(device: str) -> None:
    """Raise :class:`EngineError` now, before any work, when ``device`` (``cuda``, ``cuda:N``) is not on this machine."""
    if not device.startswith("cuda"):  # auto and cpu are always there (and need no torch import)
        return
    from pipeline.windows import auto_device

    auto_device(device)
