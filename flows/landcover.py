"""The ``landcover`` flow: segment the scenes of a catalog into label COGs and area per region and class.

One task per scene wraps :func:`pipeline.raster.run.segment_raster`; tasks receive paths and
return paths, never arrays. A task retries twice on I/O errors (``OSError``, e.g.
``rasterio.errors.RasterioIOError`` from a flaky remote COG) and never on bad input
(:class:`~pipeline.errors.InputError`): the same file fails the same way again.

Failure policy: a failed scene is reported (a ``landcover-failures`` table artifact and the
summary) and the other scenes finish. The flow run ends **Completed** when at least one scene
succeeded, with the failures in its report, so that one corrupt scene does not hide a night's
results; it ends **Failed** (raising :class:`~flows._runtime.AllItemsFailedError`) only when every
scene failed, which points at a systemic problem (model, storage, network) worth an alert.

All scenes of one flow run share one ``time``: the run's scheduled start (the night it stands for),
so ``stats.zarr`` gains one entry per night and scene.

The flow keeps flat, typed parameters (more than the six a library function should take) because
Prefect turns them into the deployment's parameter schema: each one shows in the UI form and can
be overridden alone (``prefect deployment run landcover/nightly --param device=cpu``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._runtime import (
    AllItemsFailedError,
    Failure,
    cached_model,
    collect,
    dask_runner,
    failures_table,
    finished,
    in_flight,
    item_task,
    markdown_cell,
    run_logger,
    submit_bounded,
    with_library_logs,
)
from flows._scene_plan import DEFAULT_CATALOG as DEFAULT_CATALOG
from flows._scene_plan import FLOW_NAME, plan_scenes
from flows._scene_plan import ScenePlan as ScenePlan
from pipeline.errors import InputError
from pipeline.known_warnings import ignore_known_warnings
from pipeline.memory import limit_malloc_arenas

STATS_STORE = "stats.zarr"


def local_scenes_in_flight(device: str) -> int:
    """Scenes in flight on one machine: 2, so one scene's ingest, COG and statistics (CPU) overlap
    another's model. On a GPU with 16+ CPU cores, 4: those CPU stages cost ~0.05-0.1 core-seconds
    per Mpx (docs/benchmarks.md), so at the 50 Mpx/s a GPU can take, three or four scenes' worth
    of them must run beside its model. (On CPU alone more scenes would only share the model's cores.)
    """
    from pipeline.windows import runs_on_gpu

    return 4 if runs_on_gpu(device) and (os.cpu_count() or 1) >= 16 else 2


@dataclass(frozen=True)
class SceneOutput:
    """The outputs of one segmented scene (paths as strings, so they travel to and from Dask workers)."""

    scene: str
    name: str
    labels: str
    stats: str
    quicklook: str
    seconds: float
    skipped: bool = False  # done already for this time (a retried run): nothing redone


@dataclass(frozen=True)
class LandcoverReport:
    """What a ``landcover`` run produced: outputs in catalog order, failures, and the run's ``time`` in
    ``stats.zarr`` (naive ISO 8601, UTC)."""

    out_dir: str
    time: str
    outputs: tuple[SceneOutput, ...]
    failures: tuple[Failure, ...]


@item_task("segment-scene")
@with_library_logs
def segment_scene(
    name: str,
    scene: str,
    model: str,
    out_dir: str,
    regions: str | None = None,
    region_field: str | None = None,
    block: int | None = None,
    device: str = "auto",
    time: str | None = None,
    bands: list[int] | None = None,
    force: bool = False,
    region_layer: str | None = None,
) -> SceneOutput:
    """Segment one scene (path or URL) with the model spec ``model`` (a name or a YAML path) into
    ``out_dir``; ``bands``: 1-based bands fed to the model, in order (None: all); ``force``: replace
    the store's entry for this time and scene even when another input made it; ``region_layer``:
    the layer of ``regions`` (None: its only layer)."""
    from models.spec import load_spec
    from pipeline.raster.run import segment_raster

    spec = load_spec(model)
    result = segment_raster(
        scene, spec, out_dir, regions=regions, region_field=region_field, region_layer=region_layer, block=block, device=device,
        time=time, bands=bands, model=cached_model(spec, device), force=force,
    )
    _log_scene(result)
    return SceneOutput(
        scene=scene,
        name=result.scene,
        labels=str(result.labels_path),
        stats=str(result.stats_path),
        quicklook=str(result.quicklook_path),
        seconds=float(result.seconds),
        skipped=result.skipped,
    )


def _log_scene(result) -> None:
    """One line per scene in the run's logs: input, outputs, seconds, blocks run and skipped."""
    engine = result.engine
    blocks = f"{engine.blocks_run} block(s) run, {engine.blocks_skipped} skipped" if engine is not None else "no blocks run"
    if result.skipped:
        blocks = "skipped: done already for this time (same input, model and regions; force=True redoes it)"
    run_logger(__name__).info(
        "scene %s: %s -> %s (stats %s) in %.1f s; %s", result.scene, result.info.path, result.labels_path,
        result.stats_path if result.stats.sizes.get("region") else "none: no region meets the scene", result.seconds, blocks,
    )


@flow(name=FLOW_NAME, description="Segment the scenes of a catalog into label COGs and area per region and class.")
def landcover(
    catalog: str | None = None,
    scenes: list[str] | None = None,
    model: str | None = None,
    regions: str | None = None,
    region_field: str | None = None,
    out: str | None = None,
    block: int | None = None,
    device: str = "auto",
    dask_address: str | None = None,
    max_parallel: int | None = None,
    time: str | None = None,
    bands: list[int] | None = None,
    force: bool = False,
    region_layer: str | None = None,
) -> LandcoverReport:
    """Segment scenes into ``<out>/<stem>.labels.tif`` and append area per region and class to ``<out>/stats.zarr``.

    With no arguments, runs the embedded demo catalog (``catalogs/scenes/demo.yaml``), generating
    its demo scenes into the output root on first use.

    Args:
        catalog: a scene catalog YAML (see :mod:`flows.catalog`); default: the demo catalog unless ``scenes`` is given.
        scenes: scene paths or URLs; they replace the whole catalog (its model, regions, bands and
            output are not used either, with a warning when ``catalog`` is given too, as it is on the
            ``landcover/nightly`` deployment): pass ``model`` (and ``regions`` ...) with them.
        model: model name (``segpipe models``) or spec YAML path; replaces the catalog's.
        regions: vector file of region polygons (any CRS); replaces the catalog's.
        region_field: attribute naming the regions; replaces the catalog's.
        region_layer: the layer of the regions file holding the regions, as ``segpipe raster
            --region-layer`` (needed when the file has several layers, e.g. a GeoPackage with
            ``country`` and ``districts``; checked before any scene); replaces the catalog's
            ``region_layer``, which applies only to the catalog's own regions file.
        out: output root; default: the catalog's ``output``, else ``$SEGPIPE_OUT/landcover``, else ``./segpipe-demo/landcover``.
        block: processing block edge in pixels (memory bound; results do not depend on it); default
            1024 on CPU, 2048 on a GPU.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dask_address: run the scene tasks on this Dask scheduler (``tcp://host:8786``) via prefect-dask;
            workers must see the same file system.
        max_parallel: scenes in flight at once; None = 2 on this machine (one scene's I/O overlaps
            another's inference; memory stays bounded by two scenes' blocks), 4 on a GPU machine
            with 16+ cores (:func:`local_scenes_in_flight`), unbounded on Dask.
        time: the ``time`` of this run's entries in ``stats.zarr`` (ISO 8601; naive = UTC), e.g. to
            backfill a night; default: the flow run's scheduled start.
        bands: 1-based bands fed to the model, in order (e.g. ``[4, 3, 2, 8]`` for Sentinel-2
            B, G, R, NIR), as ``segpipe raster --bands``; replaces the catalog's; default: all bands.
        force: replace ``stats.zarr`` entries (same ``time`` and scene) made from another input
            file of the same name, as ``segpipe raster --force``; default: such a scene fails.

    Returns:
        The report; failures are listed there and in the ``landcover-failures`` artifact. When some
        (not all) scenes failed the run ends COMPLETED under the name ``Completed with failures``
        (:func:`flows._runtime.finished`), something to alert on.

    Raises:
        InputError: no scenes or no model given.
        AllItemsFailedError: every scene failed.
    """
    logger = get_run_logger()
    limit_malloc_arenas()
    ignore_known_warnings()  # before any threads: see pipeline/known_warnings.py
    plan = plan_scenes(catalog, scenes, model, regions, region_field, out, bands, region_layer=region_layer)
    stamp = _run_time(time)
    failures = list(plan.failures)
    logger.info("landcover: %d scene(s) -> %s (model %s, time %s)", len(plan.todo), plan.out_dir, plan.model, stamp)
    calls = [
        {"name": name, "scene": scene, "model": plan.model, "out_dir": str(plan.out_dir), "regions": plan.regions,
         "region_field": plan.region_field, "block": block, "device": device, "time": stamp,
         "bands": None if plan.bands is None else list(plan.bands), "force": force, "region_layer": plan.region_layer}
        for name, scene in plan.todo
    ]
    with dask_runner(dask_address) as runner:
        limit = in_flight(max_parallel, dask_address, local_scenes_in_flight(device))
        futures = submit_bounded(segment_scene, calls, limit=limit, runner=runner)
        outputs, failed = collect(plan.todo, futures, "scene", logger)
    failures += failed
    report = LandcoverReport(out_dir=str(plan.out_dir), time=stamp, outputs=tuple(outputs), failures=tuple(failures))
    _publish(report)
    if not outputs:
        raise AllItemsFailedError(f"landcover: all {len(failures)} scene(s) failed; see the landcover-failures artifact")
    return finished(report, done=len(outputs), failed=len(failures), what="scene(s)", artifact="landcover-failures")


def _run_time(given: str | None) -> str:
    """``given`` or the flow run's scheduled start, as naive UTC ISO 8601 (``2024-06-01T00:00:00``).

    Raises:
        InputError: ``given`` is not an ISO 8601 date or date-time.
    """
    from prefect.runtime import flow_run

    from pipeline.raster.stats import utc_now, whole_seconds_utc

    if given is not None:
        try:
            when = datetime.fromisoformat(given)
        except ValueError as exc:
            raise InputError(given, "not an ISO 8601 date/time", "give e.g. time='2024-06-01T02:00:00+02:00'") from exc
    else:
        when = flow_run.scheduled_start_time or utc_now()
        when = when if isinstance(when, datetime) else datetime.fromisoformat(str(when))
    return whole_seconds_utc(when).isoformat()


def area_rows(store: str | Path, time: str, scenes: list[str]) -> list[dict]:
    """Rows ``scene, region, class, area_ha, area_m2, share`` of ``scenes`` at ``time`` in a ``stats.zarr``."""
    import numpy as np

    from pipeline.raster.stats import to_datetime64
    from pipeline.stats_store import open_stats

    if not scenes or not (Path(store) / "zarr.json").is_file():
        return []
    with open_stats(store) as ds:  # a snapshot under the store's shared lock
        t = to_datetime64(time)
        if t not in ds.time.values:
            return []
        at = ds.sel(time=t)
        rows = []
        for scene in scenes:
            if scene not in at.scene.values:
                continue
            one = at.sel(scene=scene)[["area_m2", "share"]].load()
            for region in one.region.values:
                for cls in one["class"].values:
                    area = float(one.area_m2.sel(region=region, **{"class": cls}))
                    if np.isnan(area):
                        continue
                    share = float(one.share.sel(region=region, **{"class": cls}))
                    rows.append({
                        "scene": str(scene), "region": str(region), "class": str(cls),
                        "area_ha": round(area / 1e4, 4), "area_m2": round(area, 2),
                        "share": None if np.isnan(share) else round(share, 6),
                    })
        return rows


def _publish(report: LandcoverReport) -> None:
    """Table artifacts (areas, failures) and a markdown summary with the output paths."""
    store = Path(report.out_dir) / STATS_STORE
    rows = area_rows(store, report.time, [o.name for o in report.outputs])
    create_table_artifact(rows, key="landcover-areas", description=f"Area per scene, region and class at {report.time} ({store})")
    create_table_artifact(failures_table(report.failures), key="landcover-failures", description=f"Scenes that failed in the run at {report.time}")
    lines = [
        f"# Land cover {report.time}",
        "",
        f"- output folder: `{report.out_dir}`",
        f"- statistics: `{store}` (`xr.open_zarr`, variable `area_m2` over time, scene, region, class)",
        f"- scenes: {len(report.outputs)} done, {len(report.failures)} failed",
        "",
        "| scene | labels | quicklook | seconds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {o.name} | `{o.labels}` | `{o.quicklook}` | {o.seconds:.1f} |" for o in report.outputs]
    if report.failures:
        lines += ["", "## Failed scenes", "", "| scene | error | message |", "|---|---|---|"]
        lines += [f"| `{f.item}` | {f.error} | {markdown_cell(f.message)} |" for f in report.failures]
    create_markdown_artifact("\n".join(lines), key="landcover-summary", description=f"Land-cover run at {report.time}")
