"""The ``segment-volumes`` flow: segment a batch of CT/MRI studies into label volumes and per-label statistics.

One task per study wraps :func:`pipeline.volume.run.segment_volume`; tasks receive and return
paths. Concurrency is bounded: at most ``max_parallel`` studies are in flight (default 1 on this
machine: one model at a time on the GPU; on a Dask cluster, its workers); every task also carries the tag ``segpipe-gpu``, so
``prefect concurrency-limit create segpipe-gpu 1`` serialises GPU work across all flow runs of a
work pool. A task retries twice on I/O errors (``OSError``) and never on bad input
(:class:`~pipeline.errors.InputError`).

A study whose outputs are complete (labels and its ``.stats.json``, written last) and were made by the
same model spec from the same input (absolute path and file fingerprint, see
:mod:`pipeline.volume.made_with`) is skipped unless ``force=True``; one done with another model, or
whose input changed since, is segmented again; outputs made from another input of the same name
(another file or folder, another ``series_uid`` of the same folder, another ``volume_index`` of the
same 4D file) fail that study before any work (:func:`pipeline.volume.run.study_done` and :func:`~pipeline.volume.run.segment_volume`
apply the rule, as for ``segpipe volume``). A bad study is reported (``segment-volumes-failures`` table artifact) and the others
finish; as for ``landcover``, the run ends **Completed** when at least one study succeeded (or was
already done) and **Failed** only when every study failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._runtime import (
    AllItemsFailedError,
    Failure,
    cached_model,
    collect,
    dask_runner,
    distinct_names,
    failures_table,
    finished,
    in_flight,
    item_task,
    markdown_cell,
    output_root,
    require_checkpoint,
    run_logger,
    submit_bounded,
    with_library_logs,
)
from flows.catalog import expand, list_studies, load_study_catalog, spec_path
from pipeline.errors import InputError
from pipeline.known_warnings import ignore_known_warnings
from pipeline.memory import limit_malloc_arenas

FLOW_NAME = "segment-volumes"
DEFAULT_CATALOG = "catalogs/studies/demo.yaml"
STATS_STORE = "stats.zarr"


@dataclass(frozen=True)
class StudyOutput:
    """The outputs of one study (paths as strings); ``skipped`` when they were already complete."""

    study: str
    name: str
    labels: str
    stats: str
    skipped: bool
    seconds: float


@dataclass(frozen=True)
class VolumesReport:
    """What a ``segment-volumes`` run produced: outputs in input order (done and skipped) and failures."""

    out_dir: str
    outputs: tuple[StudyOutput, ...]
    failures: tuple[Failure, ...]

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs if o.skipped)


@dataclass(frozen=True)
class StudyPlan:
    """The work of one run: ``todo`` holds ``(name, study)`` pairs with absolute paths."""

    out_dir: Path
    model: str
    todo: tuple[tuple[str, str], ...]
    failures: tuple[Failure, ...]


@item_task("segment-study")
@with_library_logs
def segment_study(
    name: str, study: str, model: str, out_dir: str, device: str = "auto", force: bool = False,
    series_uid: str | None = None, volume_index: int | None = None,
) -> StudyOutput:
    """Segment one study (NIfTI file or DICOM series folder) with the spec at ``model`` into ``out_dir``.

    Takes typed parameters, like the flow, and builds the library's
    :class:`~pipeline.volume.options.VolumeOptions` here.
    """
    from models.spec import load_spec
    from pipeline.volume.options import VolumeOptions
    from pipeline.volume.run import segment_volume, study_done

    spec = load_spec(model)
    options = VolumeOptions(device=device, force=force, series_uid=series_uid, volume_index=volume_index)
    done = not force and study_done(study, spec, out_dir, series_uid=series_uid, volume_index=volume_index)
    network = None if done else cached_model(spec, device)
    result = segment_volume(study, spec, out_dir, options, model=network)
    _log_study(result)
    return StudyOutput(
        study=study,
        name=result.study,
        labels=str(result.outputs.labels),
        stats=str(result.outputs.stats),
        skipped=result.skipped,
        seconds=float(result.seconds),
    )


def _log_study(result) -> None:
    """One line per study in the run's logs: input, outputs, seconds, blocks run (or why it was skipped)."""
    if result.skipped:
        what = "outputs complete, skipped"
    else:
        engine = result.engine
        skipped = f", {engine.blocks_skipped} skipped (resumed)" if engine is not None and engine.blocks_skipped else ""
        what = f"{result.blocks_run} block(s) run{skipped}" + (f"; redone: {result.redone}" if result.redone else "")
    run_logger(__name__).info(
        "study %s: %s -> %s (stats %s) in %.1f s; %s", result.study, result.source, result.outputs.labels, result.outputs.stats, result.seconds, what
    )


@flow(name=FLOW_NAME, description="Segment a batch of CT/MRI studies into label volumes and per-label volumes (mL).")
def segment_volumes(
    studies: str | list[str] | None = None,
    model: str | None = None,
    out: str | None = None,
    device: str = "auto",
    force: bool = False,
    max_parallel: int | None = None,
    dask_address: str | None = None,
    series_uid: str | None = None,
    volume_index: int | None = None,
) -> VolumesReport:
    """Segment studies into ``<out>/<stem>.labels.nii.gz`` (input grid and affine) and ``<out>/stats.zarr``.

    With no arguments, runs the embedded demo catalog (``catalogs/studies/demo.yaml``), generating
    its CT phantoms into the output root on first use.

    Args:
        studies: a folder (its NIfTI files and DICOM series sub-folders), a glob pattern, a study
            catalog YAML (see :mod:`flows.catalog`), or a list of NIfTI files / DICOM folders.
        model: model name (``segpipe models``) or spec YAML path; replaces the catalog's.
        out: output root; default: the catalog's ``output``, else ``$SEGPIPE_OUT/segment-volumes``,
            else ``./segpipe-demo/segment-volumes``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        force: redo studies whose outputs are complete.
        max_parallel: studies in flight at once; None = 1 on this machine (one model at a time per
            GPU), unbounded with ``dask_address`` (the cluster's workers bound it).
        dask_address: run the study tasks on this Dask scheduler via prefect-dask (shared file system).
        series_uid: DICOM folders holding several series: the SeriesInstanceUID to read (as
            ``--series-uid``: applies to every study; a NIfTI study given with it fails).
        volume_index: 4D NIfTI files: the volume to read, 0-based (as ``--volume-index``: applies
            to every study; a 3D file or a DICOM folder given with it fails).

    Returns:
        The report; failures are listed there and in the ``segment-volumes-failures`` artifact. When
        some (not all) studies failed the run ends COMPLETED under the name ``Completed with failures``.

    Raises:
        InputError: no studies or no model given.
        AllItemsFailedError: every study failed.
    """
    logger = get_run_logger()
    limit_malloc_arenas()
    ignore_known_warnings()  # before any threads: see pipeline/known_warnings.py
    plan = plan_studies(studies, model, out)
    failures = list(plan.failures)
    logger.info("segment-volumes: %d study(ies) -> %s (model %s)", len(plan.todo), plan.out_dir, plan.model)
    calls = [
        dict(name=name, study=study, model=plan.model, out_dir=str(plan.out_dir), device=device, force=force, series_uid=series_uid, volume_index=volume_index)
        for name, study in plan.todo
    ]
    with dask_runner(dask_address) as runner:
        futures = submit_bounded(segment_study, calls, limit=in_flight(max_parallel, dask_address, 1), runner=runner)
        outputs, failed = collect(plan.todo, futures, "study", logger)
    failures += failed
    for output in outputs:
        if output.skipped:
            logger.info("study %s: outputs complete, skipped (force=True redoes it)", output.name)
    report = VolumesReport(out_dir=str(plan.out_dir), outputs=tuple(outputs), failures=tuple(failures))
    _publish(report)
    if not outputs:
        raise AllItemsFailedError(f"segment-volumes: all {len(failures)} study(ies) failed; see the segment-volumes-failures artifact")
    return finished(report, done=len(outputs), failed=len(failures), what="study(ies)", artifact="segment-volumes-failures")


def plan_studies(studies: str | list[str] | None, model: str | None, out: str | None) -> StudyPlan:
    """Resolve ``studies`` (catalog, folder, glob or list), the model and the output root; generate missing demo inputs.

    Raises:
        InputError: nothing to segment, no model, or an unreadable catalog.
    """
    from pipeline.volume.run import output_stem

    source = DEFAULT_CATALOG if studies is None else studies
    cat = None
    if isinstance(source, str) and source.endswith((".yaml", ".yml")):
        cat = load_study_catalog(source)
    out_dir = output_root(out, cat.output if cat else None, FLOW_NAME)
    if cat is not None:
        items = [expand(s, base=cat.source.parent, output=out_dir) for s in cat.studies]
        if cat.demo is not None:
            from flows._demo import ensure_demo_studies

            ensure_demo_studies(cat.demo, items)
    elif isinstance(source, str):
        items = list_studies(source)
    else:
        items = [expand(s, base=Path.cwd(), output=out_dir) for s in source]
    if not items:
        raise InputError("studies", "no studies given", "pass a folder, a glob, a catalog YAML or a list of studies")
    model_name = model or (cat.model if cat else None)
    if not model_name:
        raise InputError(str(cat.source) if cat else "model", "no model given", "pass model=<name or spec.yaml> or set model: in the catalog")
    base = cat.source.parent if (cat is not None and not model) else Path.cwd()
    todo, failures = distinct_names(items, output_stem)
    spec = spec_path(model_name, base)
    require_checkpoint(spec)
    return StudyPlan(out_dir=out_dir, model=spec, todo=tuple(todo), failures=tuple(failures))


def volume_rows(outputs: tuple[StudyOutput, ...]) -> list[dict]:
    """Rows ``study, label, label_id, volume_ml, voxel_count, intensity_mean, intensity_std, skipped`` from the studies' stats JSON."""
    from pipeline.volume.stats import read_stats_json

    rows = []
    for out in outputs:
        stats = read_stats_json(out.stats)
        for lab in stats.labels:
            rows.append({
                "study": out.name, "label": lab.name, "label_id": lab.label_id,
                "volume_ml": round(float(lab.volume_ml), 3), "voxel_count": int(lab.voxel_count),
                "intensity_mean": _num(lab.intensity_mean), "intensity_std": _num(lab.intensity_std),
                "skipped": out.skipped,
            })
    return rows


def _num(value: float) -> float | None:
    value = float(value)
    return None if value != value else round(value, 3)


def _publish(report: VolumesReport) -> None:
    """Table artifacts (volumes per study and label, failures) and a markdown summary with the output paths."""
    store = Path(report.out_dir) / STATS_STORE
    create_table_artifact(volume_rows(report.outputs), key="segment-volumes-volumes", description=f"Volume (mL) and intensity per study and label ({store})")
    create_table_artifact(failures_table(report.failures), key="segment-volumes-failures", description="Studies that failed in this run")
    done = sum(not o.skipped for o in report.outputs)
    lines = [
        "# Volume segmentation",
        "",
        f"- output folder: `{report.out_dir}`",
        f"- statistics: `{store}` (`xr.open_zarr`, `volume_ml` over study, label)",
        f"- studies: {done} segmented, {len(report.skipped)} skipped (already done), {len(report.failures)} failed",
        "",
        "| study | labels | skipped | seconds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {o.name} | `{o.labels}` | {'yes' if o.skipped else 'no'} | {o.seconds:.1f} |" for o in report.outputs]
    if report.failures:
        lines += ["", "## Failed studies", "", "| study | error | message |", "|---|---|---|"]
        lines += [f"| `{f.item}` | {f.error} | {markdown_cell(f.message)} |" for f in report.failures]
    create_markdown_artifact("\n".join(lines), key="segment-volumes-summary", description="Volume segmentation run")
