"""Segment one study: read -> model grid -> engine -> native grid -> outputs -> statistics.

Batches of studies (locally or on Dask) are :mod:`pipeline.volume.batch`.

Outputs of a study with stem ``S`` (file name without ``.nii``/``.nii.gz``, or the DICOM folder name) in ``DIR``:

* ``S.labels.nii.gz``: labels on exactly the input grid (shape, affine, qform/sform and codes), uint8
  (uint16 when a class id or the spec's ``nodata`` exceeds 255); voxels without image data in the input
  (``Volume.nodata``: DICOM pixel padding, NaN in NIfTI) are ``spec.nodata``, set on the native grid
  after the labels come back from the model grid, so exactly there;
* ``S.labels.json`` (id -> name, colour; ``nodata``), ``S.labels.txt`` (ITK-SNAP), ``S.labels.ctbl``
  (3D Slicer), both listing the nodata value as ``nodata``;
* ``S.seg.dcm``: a DICOM SEG referencing the source series (DICOM input only);
* ``S.stats.json`` and a row of ``DIR/stats.zarr`` (see :mod:`pipeline.volume.stats`, :mod:`pipeline.volume.stats_zarr`).

Every file is written under a temporary name and renamed; ``S.stats.json`` is written last and marks
the study done. It records what made the labels and from what (:mod:`pipeline.volume.made_with`): the
model spec, and the input's absolute path, DICOM series, 4D volume and file fingerprint. A later run
skips the study only when that record matches its own (unless ``options.force``); a study done with
another model or settings, or whose input changed (the file or folder rewritten), is segmented again,
its old ``S.stats.json`` removed before any of its files is replaced, so the study never looks done
with a mix of old and new files. Outputs made from *another* input with the same stem
(``a/case01.nii.gz`` then ``b/case01.nii.gz``; another ``series_uid`` of the same folder; another
``volume_index`` of the same 4D file) are an :class:`~pipeline.errors.InputError`, raised before any
work (``force`` replaces them). When writing the outputs fails, the study's files are removed; when the
output folder fills up or turns read-only, the study fails with an ``InputError`` naming the folder
and the fix, and its work folder is removed. Intermediate zarr arrays live in
``DIR/.segpipe-work/S/`` and let a killed run resume without redoing finished engine blocks; they are
removed once the study is done. One run at a time segments a study into a folder: it holds
``DIR/.segpipe-work/S.lock`` (:mod:`pipeline.work_lock`) from the skip check to the removal of its
work folder, and a second run fails at once with an ``InputError`` (two runs sharing the work folder
wrote wrong labels that looked complete: one run's clean-up removed blocks the other had finished).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.spec import ModelSpec
from pipeline.errors import InputError, ModelSpecError
from pipeline.outputs import (
    check_stats_store,
    output_write_error,
    prepare_output_dir,
    remove_if_empty,
)
from pipeline.resume import forget_damaged_blocks
from pipeline.timing import Stopwatch
from pipeline.volume.made_with import (
    InputRecord,
    check_same_source,
    input_record,
    made_with,
    why_redo,
)
from pipeline.volume.options import DEFAULT_OPTIONS, VolumeOptions
from pipeline.volume.preprocess import (
    GridMapping,
    intensity_for,
    labels_to_native,
    logits_to_native,
    plan_grid,
    reorient,
    to_model,
)
from pipeline.volume.readers import is_nifti, read_volume, study_stem
from pipeline.volume.stats import (
    StudyStats,
    read_stats_json,
    study_statistics,
    write_stats_json,
)
from pipeline.volume.stats_zarr import merge_into_store, open_stats
from pipeline.volume.store import write_volume_store
from pipeline.volume.volume import Volume
from pipeline.volume.writers import (
    LABELS_DESCRIP,
    itksnap_label_table,
    label_dtype,
    sidecar_json,
    slicer_color_table,
    stale_temporaries,
    write_dicom_seg,
    write_labels_nifti,
    write_text_atomic,
)
from pipeline.work_lock import work_lock
from pipeline.zarr_write import fast_writes

log = logging.getLogger(__name__)

WORK_DIR = ".segpipe-work"
STATS_STORE = "stats.zarr"
BlockProgress = Callable[[int, int], None]


def output_stem(input_path: str | Path) -> str:
    """The study's name, used for its outputs: :func:`~pipeline.volume.readers.study_stem`, except that
    a path without a name of its own (``.``, ``..``, ``./``) is named after the folder it points to.

    Raises:
        InputError: the path names nothing usable (``/``, a file called ``.nii.gz``).
    """
    stem = study_stem(input_path)
    if stem in ("", ".", ".."):
        stem = study_stem(os.path.abspath(input_path))
    if not stem:
        raise InputError(input_path, "has no file or folder name to name its outputs after", "give the study by a path that ends in its file or folder name")
    return stem


@dataclass(frozen=True)
class StudyOutputs:
    """Where the outputs of one study go."""

    labels: Path
    sidecar: Path
    itksnap: Path
    slicer: Path
    seg: Path
    stats: Path
    work: Path

    @staticmethod
    def for_input(input_path: str | Path, out_dir: str | Path) -> StudyOutputs:
        stem = output_stem(input_path)
        out = Path(out_dir)
        return StudyOutputs(
            labels=out / f"{stem}.labels.nii.gz",
            sidecar=out / f"{stem}.labels.json",
            itksnap=out / f"{stem}.labels.txt",
            slicer=out / f"{stem}.labels.ctbl",
            seg=out / f"{stem}.seg.dcm",
            stats=out / f"{stem}.stats.json",
            work=out / WORK_DIR / stem,
        )

    def complete(self) -> bool:
        """The study finished: labels and (last written) statistics are present."""
        return self.labels.is_file() and self.stats.is_file()

    def files(self) -> tuple[Path, ...]:
        """Every output file of the study (``stats`` last)."""
        return (self.labels, self.sidecar, self.itksnap, self.slicer, self.seg, self.stats)

    def pattern(self) -> str:
        """The study's outputs as one name for messages: ``DIR/S.*``."""
        return str(self.stats.with_name(self.stats.name.removesuffix(".stats.json") + ".*"))


@dataclass(frozen=True)
class VolumeResult:
    """One segmented (or skipped) study; ``redone`` says why finished outputs were replaced (empty when they were not)."""

    study: str
    source: Path
    outputs: StudyOutputs
    stats: StudyStats
    skipped: bool
    seconds: float
    dicom_seg: bool = False
    windows_run: int = 0
    blocks_run: int = 0
    engine: Any = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    redone: str = ""


def check_volume_spec(spec: ModelSpec) -> None:
    """Raise :class:`ModelSpecError` unless ``spec`` is a one-channel volume model."""
    where = spec.source or spec.name
    if spec.task != "volume":
        raise ModelSpecError(where, f"model '{spec.name}' is a {spec.task} model", "use a spec with task: volume for `segpipe volume`")
    if spec.in_channels != 1:
        raise ModelSpecError(where, f"volume models take 1 channel, spec says in_channels={spec.in_channels}", "set in_channels: 1")


def segment_volume(
    input_path: str | Path,
    spec: ModelSpec,
    out_dir: str | Path,
    options: VolumeOptions = DEFAULT_OPTIONS,
    *,
    model: Any | None = None,
    progress: BlockProgress | None = None,
) -> VolumeResult:
    """Segment one study (NIfTI file or DICOM series folder) into ``out_dir``; see the module docstring.

    Args:
        input_path: the study.
        spec: a volume model spec (``task: volume``, ``in_channels: 1``).
        out_dir: output folder (created).
        options: the per-study settings: device, engine block ``(z, y, x)`` in voxels, force, DICOM
            series, 4D NIfTI volume (:class:`~pipeline.volume.options.VolumeOptions`, checked when built).
        model: a ready network ``(N, 1, *window) -> (N, K, *window)`` on ``(z, y, x)`` windows; None
            loads ``spec``'s checkpoint on ``options.device``. A live object, so not part of ``options``.
        progress: ``callable(blocks_done, blocks_total)`` from the engine.

    Raises:
        InputError: ``out_dir`` is a file, is not writable or holds raster statistics; the study is
            unreadable; ``options`` ask for a series of a NIfTI file or a volume of a DICOM folder;
            the outputs present were made from another input with the same stem (without
            ``options.force``); ``out_dir`` fills up or turns read-only during the run; or another run
            is segmenting this study into ``out_dir`` (nothing of it is touched). The message names the
            file, the problem and the fix.
    """
    started = time.perf_counter()
    check_volume_spec(spec)
    input_path = Path(input_path)
    _check_options_fit(input_path, options)
    out_dir = prepare_output_dir(out_dir)
    check_stats_store(out_dir / STATS_STORE, "volume")
    try:
        with work_lock(out_dir / WORK_DIR, output_stem(input_path), subject=input_path, out_dir=out_dir, what="study"):
            return _segment_study(input_path, spec, out_dir, options, model=model, progress=progress, started=started)
    finally:
        remove_if_empty(out_dir / WORK_DIR)  # after the lock file is gone


def _segment_study(
    input_path: Path, spec: ModelSpec, out_dir: Path, options: VolumeOptions, *, model: Any, progress: BlockProgress | None, started: float
) -> VolumeResult:
    """:func:`segment_volume` once the study's lock is held: skip it, or segment it and write its outputs."""
    outputs = StudyOutputs.for_input(input_path, out_dir)
    stem = output_stem(input_path)
    _remove_stale_temporaries(outputs)
    asked = input_record(input_path, series_uid=options.series_uid, volume_index=options.volume_index, out_dir=out_dir)
    redone = ""
    if not options.force and outputs.complete():
        previous, redone = _previous_outputs(outputs, spec, asked, conflict=True)
        if previous is not None:
            _ensure_row(previous, out_dir / STATS_STORE)
            _remove_work(outputs)  # left by a run killed after its S.stats.json: nothing resumes from it now
            log.info("%s: outputs present, skipped (use force to redo)", stem)
            return VolumeResult(
                stem, Path(asked.source), outputs, previous, skipped=True, seconds=time.perf_counter() - started, dicom_seg=outputs.seg.is_file()
            )
        log.info("%s: segmenting again, the outputs present were %s", stem, redone)
    if not options.force:
        _refuse_foreign_labels(outputs.labels)
    watch = Stopwatch()
    with watch.stage("read"):
        volume = read_volume(input_path, series_uid=options.series_uid, volume_index=options.volume_index)
    read = asked if volume.dicom is None else dataclasses.replace(asked, series_uid=volume.dicom.series_uid)
    record = made_with(spec, source=read)
    if options.force:
        shutil.rmtree(outputs.work, ignore_errors=True)
    if model is None:
        from models.checkpoint import load_model
        from pipeline.engine import auto_device

        with watch.stage("load model"):
            model = load_model(spec, auto_device(options.device))
    try:
        with watch.stage("segment"):
            labels, engine_report = _labels_on_native_grid(volume, spec, outputs.work, model, options, progress=progress, record=record)
        with watch.stage("stats"):
            stats = study_statistics(
                stem, labels, volume.data, volume.affine, [(c.id, c.name) for c in spec.classes],
                source=read.source, modality=volume.modality, model=spec.name, made_with=record, nodata=spec.nodata,
            )
        with watch.stage("write"):
            dicom_seg = _write_outputs(volume, spec, labels, stats, outputs, out_dir / STATS_STORE)
    except OSError as exc:
        error = output_write_error(out_dir, exc, writing=f"the outputs of {stem}")
        if error is None:
            raise
        _remove_work(outputs)  # nothing to resume from a full or read-only folder, and it takes space
        raise error from exc
    _remove_work(outputs)
    seconds = time.perf_counter() - started
    log.info("%s: %d windows, %d blocks, %.1fs", stem, engine_report.windows_run, engine_report.blocks_run, seconds)
    return VolumeResult(
        stem, Path(read.source), outputs, stats, skipped=False, seconds=seconds, dicom_seg=dicom_seg,
        windows_run=engine_report.windows_run, blocks_run=engine_report.blocks_run, engine=engine_report, timings=watch.seconds,
        redone=redone,
    )


def study_done(
    input_path: str | Path, spec: ModelSpec, out_dir: str | Path, *, series_uid: str | None = None, volume_index: int | None = None
) -> bool:
    """Whether :func:`segment_volume` (without ``force``) would skip the study: its outputs are complete,
    made by ``spec`` from this input (same path, series, volume and fingerprint). Outputs made from
    another input with the same stem are not done (segmenting then raises the conflict)."""
    outputs = StudyOutputs.for_input(input_path, out_dir)
    if not outputs.complete():
        return False
    asked = input_record(input_path, series_uid=series_uid, volume_index=volume_index, out_dir=out_dir)
    return _previous_outputs(outputs, spec, asked, conflict=False)[0] is not None


def _check_options_fit(input_path: Path, options: VolumeOptions) -> None:
    """Refuse a series for a NIfTI file and a volume for a DICOM folder (they would be ignored)."""
    if options.series_uid is not None and not input_path.is_dir() and is_nifti(input_path):
        raise InputError(
            input_path, f"--series-uid {options.series_uid} given but this is a NIfTI file (--series-uid applies to DICOM folders)",
            "drop --series-uid (series_uid= from Python) for NIfTI inputs, or segment them in a run of their own",
        )
    if options.volume_index is not None and input_path.is_dir():
        raise InputError(
            input_path, f"--volume-index {options.volume_index} given but this is a DICOM folder (--volume-index applies to 4D NIfTI files)",
            "drop --volume-index (volume_index= from Python) for DICOM inputs, or segment them in a run of their own",
        )


def _previous_outputs(outputs: StudyOutputs, spec: ModelSpec, asked: InputRecord, *, conflict: bool) -> tuple[StudyStats | None, str]:
    """The statistics of complete ``outputs`` when ``spec`` made them from ``asked``, else None and why not.

    Raises:
        InputError: ``conflict`` and the outputs were made from another input path (:func:`check_same_source`).
    """
    try:
        previous = read_stats_json(outputs.stats)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable ({outputs.stats.name}: {type(exc).__name__}: {exc})"
    if conflict:
        check_same_source(previous.made_with, asked, outputs.pattern())
    reason = why_redo(previous.made_with, made_with(spec, source=asked), old_model=previous.model)
    return (previous, "") if reason is None else (None, reason)


def _refuse_foreign_labels(path: Path) -> None:
    """Refuse to replace a ``S.labels.nii.gz`` that segpipe did not write (its header description is
    not ``segpipe labels``): a user's own segmentation under that name was silently overwritten.

    Raises:
        InputError: naming the file and the fix (move it, another --out, or --force to replace it).
    """
    if not path.is_file():
        return
    import nibabel as nib

    try:
        descrip = bytes(nib.load(path).header["descrip"]).rstrip(b"\0").decode("latin-1", "replace")
    except Exception:  # not even a NIfTI file: certainly not ours
        descrip = "(not a readable NIfTI header)"
    if descrip != LABELS_DESCRIP:
        raise InputError(
            path, f"exists and was not written by segpipe (header description {descrip!r}); segmenting would replace it",
            "move it away or give another --out (--force replaces it)",
        )


def _remove_stale_temporaries(outputs: StudyOutputs) -> None:
    """Remove the half-written output files a run killed while writing them left (``.tmp-<pid>-S.*``;
    a CT's labels are tens of MB): nothing renames them into place. Under the study's lock."""
    for path in outputs.files():
        for stale in stale_temporaries(path):
            log.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)


def _remove_work(outputs: StudyOutputs) -> None:
    """Remove the study's work folder (under its lock; :func:`segment_volume` then removes ``WORK_DIR`` if empty)."""
    shutil.rmtree(outputs.work, ignore_errors=True)


def _write_outputs(volume: Volume, spec: ModelSpec, labels: np.ndarray, stats: StudyStats, outputs: StudyOutputs, store: Path) -> bool:
    """Replace the study's outputs: old ``S.stats.json`` first (the study no longer looks done), new one last.

    Returns whether a DICOM SEG was written. Any failure removes the study's files, so none is left
    that looks finished.
    """
    try:
        outputs.stats.unlink(missing_ok=True)
        dicom_seg = _write_label_outputs(volume, spec, labels, outputs, source=stats.source)
        if not dicom_seg:
            outputs.seg.unlink(missing_ok=True)
        merge_into_store(stats, store)
        write_stats_json(stats, outputs.stats)  # last: marks the study complete
    except BaseException:
        for path in outputs.files():
            try:
                path.unlink(missing_ok=True)
            except OSError:  # a folder turned read-only: keep the first error
                log.warning("%s: could not remove it after a failed write", path)
        raise
    return dicom_seg


def _labels_on_native_grid(
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


def _write_label_outputs(volume: Volume, spec: ModelSpec, labels: np.ndarray, outputs: StudyOutputs, *, source: str) -> bool:
    """Labels NIfTI, sidecar (naming the absolute ``source``), colour tables and (DICOM input) DICOM SEG. Returns whether a SEG was written."""
    write_labels_nifti(labels, volume.header, outputs.labels)
    write_text_atomic(sidecar_json(spec.classes, source=source, model=spec.name, nodata=spec.nodata), outputs.sidecar)
    write_text_atomic(itksnap_label_table(spec.classes, spec.nodata), outputs.itksnap)
    write_text_atomic(slicer_color_table(spec.classes, spec.nodata), outputs.slicer)
    if volume.dicom is None:
        return False
    write_dicom_seg(labels, volume.dicom, spec.classes, outputs.seg, model_name=spec.name)
    return True


def _ensure_row(stats: StudyStats, store: Path) -> None:
    """Put a finished study's statistics back into ``stats.zarr`` if its row is missing."""
    try:
        present = stats.study in set(open_stats(store).study.values.tolist())
    except (FileNotFoundError, OSError, ValueError, KeyError):
        present = False
    if not present:
        merge_into_store(stats, store)
