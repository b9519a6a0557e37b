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

The engine run and its work folder are :mod:`pipeline.volume.segment`; the outputs are written by
:mod:`pipeline.volume.publish`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.spec import ModelSpec
from pipeline.errors import InputError, ModelSpecError
from pipeline.outputs import (
    check_stats_store,
    output_write_error,
    prepare_output_dir,
    remove_if_empty,
)
from pipeline.timing import Stopwatch
from pipeline.volume.made_with import (
    InputRecord,
    check_same_source,
    input_record,
    made_with,
    why_redo,
)
from pipeline.volume.options import DEFAULT_OPTIONS, VolumeOptions
from pipeline.volume.publish import ensure_row, refuse_foreign_labels, remove_stale_study_temporaries, write_outputs
from pipeline.volume.readers import is_nifti, read_volume, study_stem
from pipeline.volume.segment import BlockProgress, labels_on_native_grid
from pipeline.volume.stats import (
    StudyStats,
    read_stats_json,
    study_statistics,
)
from pipeline.work_lock import work_lock

log = logging.getLogger(__name__)

WORK_DIR = ".segpipe-work"
STATS_STORE = "stats.zarr"


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
    remove_stale_study_temporaries(outputs)
    asked = input_record(input_path, series_uid=options.series_uid, volume_index=options.volume_index, out_dir=out_dir)
    redone = ""
    if not options.force and outputs.complete():
        previous, redone = _previous_outputs(outputs, spec, asked, conflict=True)
        if previous is not None:
            ensure_row(previous, out_dir / STATS_STORE)
            _remove_work(outputs)  # left by a run killed after its S.stats.json: nothing resumes from it now
            log.info("%s: outputs present, skipped (use force to redo)", stem)
            return VolumeResult(
                stem, Path(asked.source), outputs, previous, skipped=True, seconds=time.perf_counter() - started, dicom_seg=outputs.seg.is_file()
            )
        log.info("%s: segmenting again, the outputs present were %s", stem, redone)
    if not options.force:
        refuse_foreign_labels(outputs.labels)
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
            labels, engine_report = labels_on_native_grid(volume, spec, outputs.work, model, options, progress=progress, record=record)
        with watch.stage("stats"):
            stats = study_statistics(
                stem, labels, volume.data, volume.affine, [(c.id, c.name) for c in spec.classes],
                source=read.source, modality=volume.modality, model=spec.name, made_with=record, nodata=spec.nodata,
            )
        with watch.stage("write"):
            dicom_seg = write_outputs(volume, spec, labels, stats, outputs, out_dir / STATS_STORE)
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
    """Refuse a series for a NIfTI file and a volume for a DICOM folder or file (they would be ignored)."""
    if options.series_uid is not None and not input_path.is_dir() and is_nifti(input_path):
        raise InputError(
            input_path, f"--series-uid {options.series_uid} given but this is a NIfTI file (--series-uid applies to DICOM folders)",
            "drop --series-uid (series_uid= from Python) for NIfTI inputs, or segment them in a run of their own",
        )
    if options.volume_index is not None and (input_path.is_dir() or (input_path.is_file() and not is_nifti(input_path))):
        what = "a DICOM folder" if input_path.is_dir() else "not a NIfTI file"
        raise InputError(
            input_path, f"--volume-index {options.volume_index} given but this is {what} (--volume-index applies to 4D NIfTI files)",
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


def _remove_work(outputs: StudyOutputs) -> None:
    """Remove the study's work folder (under its lock; :func:`segment_volume` then removes ``WORK_DIR`` if empty)."""
    shutil.rmtree(outputs.work, ignore_errors=True)
