"""Segment a batch of studies: each one through :func:`pipeline.volume.run.segment_volume`, locally
or one Dask task per study; a bad study becomes a :class:`StudyFailure` and never stops the others.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from models.spec import ModelSpec
from pipeline.errors import SegpipeError
from pipeline.outputs import (
    check_stats_store,
    output_write_error,
    prepare_output_dir,
    remove_if_empty,
)
from pipeline.volume.options import DEFAULT_OPTIONS, VolumeOptions
from pipeline.volume.run import (
    STATS_STORE,
    BlockProgress,
    VolumeResult,
    check_volume_spec,
    output_stem,
    segment_volume,
    study_done,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyFailure:
    """A study that could not be segmented: the input and the message (naming the problem and fix).

    ``traceback``: an unexpected error's traceback, so that a batch run on Dask workers can log it
    where the batch was started (``-v`` shows it there); empty for input errors.
    """

    source: str
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class BatchReport:
    """The outcome of :func:`segment_volumes`: results in input order and failures."""

    results: tuple[VolumeResult, ...]
    failures: tuple[StudyFailure, ...]
    stats_store: Path

    @property
    def ok(self) -> bool:
        return not self.failures


class BatchProgress(Protocol):
    """Progress callbacks of :func:`segment_volumes` (all optional to act on)."""

    def study_started(self, study: str, index: int, total: int) -> None: ...

    def blocks(self, done: int, total: int) -> None: ...

    def study_finished(self, outcome: VolumeResult | StudyFailure) -> None: ...


def segment_volumes(
    inputs: Sequence[str | Path],
    spec: ModelSpec,
    out_dir: str | Path,
    options: VolumeOptions = DEFAULT_OPTIONS,
    *,
    model: Any | None = None,
    progress: BatchProgress | None = None,
    dask_address: str | None = None,
) -> BatchReport:
    """Segment a batch; a bad study becomes a :class:`StudyFailure` and never stops the others.

    Args:
        inputs: the studies (NIfTI files or DICOM series folders); a study with the same stem as an
            earlier one fails (its outputs would replace the earlier one's).
        spec: a volume model spec (``task: volume``, ``in_channels: 1``).
        out_dir: output folder (created).
        options: the settings of every study (:class:`~pipeline.volume.options.VolumeOptions`); sent
            as they are to each Dask task.
        model: a ready network, as for :func:`segment_volume`; None loads ``spec``'s checkpoint once
            here (when a study needs it) or, on Dask, in each study's task.
        progress: study and block callbacks (:class:`BatchProgress`); block progress is local only.
        dask_address: run one task per study on this Dask scheduler (workers need the same file
            system); None runs the studies here one after another. Where the batch runs, not how a
            study is segmented, so not part of ``options``.

    Raises:
        InputError: ``out_dir`` is a file or holds raster statistics, or the Dask scheduler is unreachable
            (checked before any study is read).
        ModelSpecError, CheckpointError: the model itself is unusable (every study would fail).
    """
    check_volume_spec(spec)
    if model is None:
        from models.checkpoint import require_checkpoint

        require_checkpoint(spec)  # once, not once per study (on Dask each task would load it)
    created = not Path(out_dir).exists()
    out_dir = prepare_output_dir(out_dir)
    try:
        check_stats_store(out_dir / STATS_STORE, "volume")
        return _segment_batch([Path(p) for p in inputs], spec, out_dir, options, model, progress, dask_address)
    finally:
        if created:
            remove_if_empty(out_dir)  # every study failed before writing anything


def _segment_batch(
    inputs: list[Path], spec: ModelSpec, out_dir: Path, options: VolumeOptions, model: Any, progress: BatchProgress | None, dask_address: str | None
) -> BatchReport:
    todo, failures = _dedupe(inputs)
    if dask_address:
        outcomes = _run_on_dask(dask_address, todo, spec, out_dir, options, model, progress)
    else:
        if model is None and any(options.force or not _done(p, spec, out_dir, options) for p in todo):
            from models.checkpoint import load_model
            from pipeline.engine import auto_device

            model = load_model(spec, auto_device(options.device))
        outcomes = []
        for index, path in enumerate(todo):
            if progress is not None:
                progress.study_started(output_stem(path), index, len(todo))
            outcome = _segment_one(path, spec, out_dir, options, model, progress.blocks if progress is not None else None)
            outcomes.append(outcome)
            if progress is not None:
                progress.study_finished(outcome)
    results = tuple(o for o in outcomes if isinstance(o, VolumeResult))
    failures = tuple(failures) + tuple(o for o in outcomes if isinstance(o, StudyFailure))
    return BatchReport(results=results, failures=failures, stats_store=out_dir / STATS_STORE)


def _done(path: Path, spec: ModelSpec, out_dir: Path, options: VolumeOptions) -> bool:
    """:func:`study_done` with the batch's series and volume; a study that will fail is not done."""
    try:
        return study_done(path, spec, out_dir, series_uid=options.series_uid, volume_index=options.volume_index)
    except SegpipeError:
        return False


def _dedupe(inputs: list[Path]) -> tuple[list[Path], list[StudyFailure]]:
    """Inputs with distinct stems; later duplicates fail (their outputs would overwrite the first), as
    does an input without a name (``/``)."""
    seen: dict[str, Path] = {}
    todo, failures = [], []
    for path in inputs:
        try:
            stem = output_stem(path)
        except SegpipeError as exc:
            failures.append(StudyFailure(str(path), str(exc)))
            continue
        if stem in seen and _same_pair(path, seen[stem]):  # `data/*` gives both a.hdr and a.img: one study
            log.info("%s: the other file of the NIfTI pair %s, segmented once", path, seen[stem])
            continue
        if stem in seen:
            message = f"{path}: same output name '{stem}' as {seen[stem]} (rename one of them or run them into different --out folders)"
            failures.append(StudyFailure(str(path), message))
            continue
        seen[stem] = path
        todo.append(path)
    return todo, failures


def _same_pair(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the two files (``.hdr``, ``.img``) of one NIfTI pair."""
    from pipeline.volume.sniff import is_pair_name, pair_files

    if not (is_pair_name(a) and is_pair_name(b)):
        return False
    return pair_files(a)[0].resolve() == pair_files(b)[0].resolve()


def _segment_one(
    path: Path, spec: ModelSpec, out_dir: Path, options: VolumeOptions, model: Any, blocks: BlockProgress | None
) -> VolumeResult | StudyFailure:
    """One study, with every error turned into a :class:`StudyFailure` (the batch goes on)."""
    try:
        return segment_volume(path, spec, out_dir, options, model=model, progress=blocks)
    except SegpipeError as exc:
        # INFO, not WARNING: the caller reports the failure (the CLI's failures table), so it shows once
        log.info("%s", exc)
        return StudyFailure(str(path), str(exc))
    except OSError as exc:  # the output folder filled up or turned read-only outside the writes segment_volume guards
        error = output_write_error(out_dir, exc, writing=f"the outputs of {output_stem(path)}")
        if error is None:
            return _unexpected(path, exc)
        log.info("%s", error)
        return StudyFailure(str(path), str(error))
    except Exception as exc:  # noqa: BLE001 - a study must never stop the batch; the message keeps the cause
        return _unexpected(path, exc)


def _unexpected(path: Path, exc: Exception) -> StudyFailure:
    log.info("%s: unexpected failure", path, exc_info=exc)
    return StudyFailure(
        str(path),
        f"{path}: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback; please report it with the input's description)",
        "".join(traceback.format_exception(exc)),
    )


def _run_on_dask(
    address: str, todo: list[Path], spec: ModelSpec, out_dir: Path, options: VolumeOptions, model: Any, progress: BatchProgress | None
) -> list[VolumeResult | StudyFailure]:
    """One Dask task per study on the scheduler at ``address``; outcomes in input order.

    Workers get absolute paths (inputs and ``out_dir``, against this process's working directory):
    a worker resolves a relative path against its own. Failures keep the input as given.
    """
    from distributed import as_completed

    from pipeline.dask_client import dask_client

    out_abs = Path(os.path.abspath(out_dir))
    with dask_client(address) as client:
        futures = {}
        for index, path in enumerate(todo):
            if progress is not None:
                progress.study_started(output_stem(path), index, len(todo))
            key = f"segpipe-volume-{output_stem(path)}-{os.getpid()}-{index}"
            futures[client.submit(_segment_one, Path(os.path.abspath(path)), spec, out_abs, options, model, None, key=key, pure=False)] = index
        outcomes: list[Any] = [None] * len(todo)
        for future in as_completed(futures):
            index = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker must not stop the batch
                log.info("%s: worker failed", todo[index], exc_info=exc)
                outcome = StudyFailure(str(todo[index]), f"{todo[index]}: worker failed: {type(exc).__name__}: {exc}")
            if isinstance(outcome, StudyFailure):
                if outcome.traceback:  # logged on the worker, out of the user's sight: -v shows it here
                    log.info("%s: unexpected failure on a Dask worker:\n%s", todo[index], outcome.traceback.rstrip())
                outcome = StudyFailure(str(todo[index]), outcome.message, outcome.traceback)
            outcomes[index] = outcome
            if progress is not None:
                progress.study_finished(outcome)
    return outcomes
