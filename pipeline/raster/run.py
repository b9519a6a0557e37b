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
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from models.spec import ModelSpec, load_spec
from pipeline.errors import InputError, ModelSpecError
from pipeline.known_warnings import known_warnings_ignored
from pipeline.memory import release_free_memory
from pipeline.outputs import check_stats_store, output_write_error, prepare_output_dir, remove_if_empty, remove_stale_temporaries, temporary_name
from pipeline.raster.blocks import MAX_BLOCK
from pipeline.raster.cog import refuse_foreign_labels, write_label_cog
from pipeline.raster.entries import check_store_accepts, entry_done
from pipeline.raster.ingest import band_stats, every_pixel_valid, ingest_raster, read_preview
from pipeline.raster.probe import RasterInfo, probe_raster, scene_stem
from pipeline.raster.provenance import Provenance, provenance_of
from pipeline.raster.quicklook import rgb_bands, write_quicklook
from pipeline.raster.regions import NoRegionInScene, Regions, read_regions, scene_region
from pipeline.raster.stats import append_stats, compute_stats, to_datetime64
from pipeline.resume import forget_damaged_blocks
from pipeline.stats_store import open_stats
from pipeline.timing import Stopwatch
from pipeline.work_lock import discard_unreadable_store, work_lock
from pipeline.zarr_write import fast_writes

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total); stages: ingest, segment, stats
WORK_DIR = ".work"
STATS_STORE = "stats.zarr"
LABELS_ATTR = "segpipe_labels"


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
    modification time), model, checkpoint, regions, region field and layer and bands, and whose label COG and
    quicklook exist, is skipped (``skipped=True``): a retried nightly run (same scheduled time)
    redoes only what it had not finished.

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

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
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
    provenance = provenance_of(image, spec, regions, region_field=region_field, region_layer=region_layer, bands=bands)
    store = out_dir / STATS_STORE
    snapshot = open_stats(store) if (store / "zarr.json").is_file() else None  # one read of the store for both checks
    check_store_accepts(
        store, time=run_time, scene=stem, source=provenance.source, classes=[(c.id, c.name) for c in spec.classes], force=force, snapshot=snapshot
    )
    info = probe_raster(image, bands=bands, in_channels=spec.in_channels, model_name=spec.name)
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
                    image, work, block=block, bands=bands, in_channels=spec.in_channels, model_name=spec.name, progress=_stage(progress, "ingest"),
                )
            ingested = True
            release_free_memory()  # the ingest's freed GDAL cache would otherwise add to the engine's peak
            with watch.stage("segment"):
                report = _segment(
                    work, spec, info, block=block, device=device, label_dtype=label_dtype, model=model, dask_client=dask_client,
                    progress=_stage(progress, "segment"),
                )
            release_free_memory()
            entry = Entry(time=run_time, scene=stem, provenance=provenance, force=force)
            result = _write_outputs(work, image, spec, info, region_set, out_dir, entry=entry, block=block, progress=progress, watch=watch)
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
    stats = snapshot.sel(time=run_time, scene=stem)
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


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return functools.partial(progress, stage)


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


def _segment(work: Path, spec: ModelSpec, info: RasterInfo, *, block: int, device: str, label_dtype: str, model: Any, dask_client: Any, progress):
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


@dataclass(frozen=True)
class Entry:
    """Where one scene's statistics go in ``stats.zarr`` and what made them."""

    time: np.datetime64
    scene: str
    provenance: Provenance
    force: bool = False


def _write_outputs(
    work: Path, image, spec: ModelSpec, info: RasterInfo, regions: Regions | None, out_dir: Path, *, entry: Entry, block: int, progress, watch: Stopwatch
):
    """Write the label COG and the quicklook under temporary names, rename them into place, and only
    then append the statistics: a scene that fails on the way leaves no output that looks complete
    (no label COG, quicklook or ``stats.zarr`` entry of this run; a crash between the renames and
    the append leaves files without an entry, which the next run redoes)."""
    import zarr

    stem = entry.scene
    group = zarr.open_group(work, mode="r", use_consolidated=False)
    # an all-valid mask changes nothing: skip reading it (twice) when the ingest saw no invalid pixel
    labels, mask = group["labels"], None if every_pixel_valid(work) else group["mask"]
    labels_path, quicklook_path = out_dir / f"{stem}.labels.tif", out_dir / f"{stem}.quicklook.png"
    staged = {path: temporary_name(path) for path in (labels_path, quicklook_path)}  # <name>.tmp-<8 hex>, renamed last
    for path in staged:
        _remove_stale_staging(path)
    published: list[Path] = []
    try:
        with watch.stage("cog"):
            write_label_cog(labels, mask, info, spec.classes, staged[labels_path], nodata=spec.nodata, model=spec.name)
        stats, stats_path = xr.Dataset(), out_dir / STATS_STORE
        if regions is not None:  # None: no region meets the scene, nothing to add to the store
            with watch.stage("stats"):
                stats = compute_stats(labels, mask, info, regions, spec.classes, block=block, progress=_stage(progress, "stats"))
        with watch.stage("quicklook"):
            rgb = rgb_bands(image, info.bands)
            write_quicklook(image, staged[labels_path], spec.classes, staged[quicklook_path], rgb=rgb, preview=read_preview(work))
        moves = [(_aux(staged[labels_path]), _aux(labels_path)), (staged[labels_path], labels_path), (staged[quicklook_path], quicklook_path)]
        for source, final in moves:  # the sidecar first: a COG in place has its class names
            source.replace(final)
            published.append(final)
        if regions is not None:
            with watch.stage("stats"):
                stats_path = append_stats(stats, stats_path, time=entry.time, scene=stem, provenance=entry.provenance, force=entry.force)
    except BaseException:
        for path in published:  # this run's files, without their statistics entry: not left looking complete
            path.unlink(missing_ok=True)
        for path in staged.values():
            for leftover in (path, _aux(path)):
                leftover.unlink(missing_ok=True)
        raise
    return labels_path, stats_path, quicklook_path, stats


def _aux(path: Path) -> Path:
    return path.with_name(path.name + ".aux.xml")


def _remove_stale_staging(final: Path) -> None:
    """Remove what a killed run was writing for ``final``, and nothing else: the staged file
    (``<name>.tmp-<8 hex>``) and its ``.aux.xml``, and the writers' own hidden temporaries
    (``.<name>[.tmp-<8 hex>].<8 hex>.tmp.tif|cog.tif|aux.xml|png``, see :mod:`pipeline.raster.cog` and
    :mod:`pipeline.raster.quicklook`). Called under the scene's work lock: no live run of this scene writes them."""
    remove_stale_temporaries(final)
    name = re.escape(final.name)
    ours = re.compile(rf"{name}\.tmp-[0-9a-f]{{8}}\.aux\.xml|\.{name}(\.tmp-[0-9a-f]{{8}})?\.[0-9a-f]{{8}}\.(tmp\.tif|cog\.tif|aux\.xml|png)")
    for stale in final.parent.glob(f"*{glob_escape(final.name)}*"):
        if ours.fullmatch(stale.name):
            log.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)
