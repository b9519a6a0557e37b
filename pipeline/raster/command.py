"""``segpipe raster IMAGE... --model MODEL --out DIR``: segment land-cover scenes.

Each scene writes ``DIR/<stem>.labels.tif`` (COG), ``DIR/<stem>.quicklook.png`` and appends to
``DIR/stats.zarr``. A scene that fails is reported and the others still run; the exit code is 1
when any scene failed (2 for a bad model or options, as for every segpipe command).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli_types import device_name
from pipeline.errors import InputError, SegpipeError
from pipeline.raster.blocks import MAX_BLOCK, MIN_BLOCK
from pipeline.urls import public_url

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "raster",
        help="segment GeoTIFF/COG rasters into label COGs and area statistics",
        description="Segment rasters block by block; write DIR/<stem>.labels.tif, DIR/<stem>.quicklook.png and DIR/stats.zarr.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="rasters (paths or GDAL-readable URLs)")
    p.add_argument("--model", required=True, help="model name from the catalog (`segpipe models`) or a YAML spec path")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--regions", metavar="FILE", help="region polygons (GeoJSON, GeoPackage, Shapefile; any CRS)")
    p.add_argument(
        "--region-field", metavar="NAME",
        help="attribute naming each region (default: 'name' if present, else the feature number 1, 2, ..., with a warning: "
        "such names collide with other regions files' in one stats.zarr)",
    )
    p.add_argument(
        "--region-layer", metavar="NAME",
        help="layer of the --regions file holding the regions (needed when the file has several, e.g. a GeoPackage)",
    )
    p.add_argument(
        "--block", type=_block, metavar="N", help=f"block size in pixels, {MIN_BLOCK} to {MAX_BLOCK}; bounds memory (default 1024 on CPU, 2048 on a GPU)"
    )
    p.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--bands", type=_bands, metavar="1,2,3,4", help="1-based bands to feed the model, in order (default: every band but alpha bands)")
    p.add_argument("--time", metavar="ISO", help="run time recorded in stats.zarr (default: now, UTC, in whole seconds)")
    p.add_argument(
        "--force", action="store_true",
        help="redo a scene already done for this --time, and replace stats.zarr's entry for it even when another input file "
        "(same name) made it",
    )
    p.add_argument("--dask-address", metavar="ADDR", help="run blocks on this Dask scheduler (DIR must be shared with the workers)")
    p.set_defaults(func=run)




def _block(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels (e.g. 1024)") from None
    if value > MAX_BLOCK:
        raise argparse.ArgumentTypeError(f"{value} pixels is too large: each block is held in memory (use at most {MAX_BLOCK}; 1024 suits CPUs, 2048 GPUs)")
    if value < MIN_BLOCK:
        raise argparse.ArgumentTypeError(
            f"{value} pixels is too small: each block is a zarr chunk file, so tiny blocks mean millions of files "
            f"(use at least {MIN_BLOCK}; 1024 suits CPUs, 2048 GPUs)"
        )
    return value


def _bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        bands = ()
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1-based band numbers separated by commas, e.g. 1,2,3,4")
    return bands


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from models.checkpoint import require_checkpoint
    from models.spec import load_spec
    from pipeline.outputs import check_stats_store, prepare_output_dir, remove_if_empty
    from pipeline.raster.probe import scene_stem
    from pipeline.raster.regions import check_regions_file
    from pipeline.raster.run import STATS_STORE, check_device, segment_raster
    from pipeline.raster.stats import to_datetime64

    # whole-run checks (exit 2), all before the model loads
    spec = load_spec(args.model)
    if spec.task != "raster":
        raise InputError(args.model, f"model task is '{spec.task}'", "use a raster model with `segpipe raster`")
    when = to_datetime64(args.time)
    if not args.dask_address:  # with Dask the device is the workers'
        check_device(args.device)
    if args.region_field is not None and args.regions is None:
        raise InputError(args.region_field, "--region-field given without --regions", "add --regions FILE")
    if args.region_layer is not None and args.regions is None:
        raise InputError(args.region_layer, "--region-layer given without --regions", "add --regions FILE")
    if args.regions is not None:  # the same file for every scene: one message, before any work
        check_regions_file(args.regions, field=args.region_field, layer=args.region_layer)
    check_stats_store(Path(args.out) / STATS_STORE, "raster")
    check_class_table_of(Path(args.out) / STATS_STORE, spec)
    created = [p for p in (*reversed(Path(args.out).parents), Path(args.out)) if not p.exists()]
    prepare_output_dir(args.out)
    out = Console()
    err = Console(stderr=True)
    # per-input checks (reported at once; the other inputs still run)
    rejected = screen_inputs(args.images, scene_stem)
    for problem in rejected.values():
        err.print(f"[red]error[/red] {escape(str(problem))}", soft_wrap=True)
    failed = [image for image in args.images if image in rejected]
    todo = [image for image in args.images if image not in rejected]
    model, client = None, None
    try:  # an unusable model, checkpoint or --dask-address (exit 2) leaves no empty --out behind
        if todo:
            require_checkpoint(spec)  # once, before any scene (with --dask-address each worker would fail on it)
            client = _dask_client(args.dask_address) if args.dask_address else None
        if client is None and todo:
            from models.checkpoint import load_model

            model = load_model(spec, args.device)
    except BaseException:
        for folder in reversed(created):
            remove_if_empty(folder)
        raise
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=False) as bar:
            for image in todo:
                stem = scene_stem(image)
                task = bar.add_task(escape(f"{stem}: start"), total=None)

                def fail(message: str, task=task, stem=stem, image=image) -> None:
                    failed.append(image)
                    bar.update(task, description=escape(f"{stem}: failed"))
                    err.print(f"[red]error[/red] {escape(message)}", soft_wrap=True)

                def progress(stage: str, done: int, total: int, task=task, stem=stem) -> None:
                    bar.update(task, description=escape(f"{stem}: {stage}"), completed=done, total=total)

                try:
                    result = segment_raster(
                        image, spec, args.out, regions=args.regions, region_field=args.region_field, region_layer=args.region_layer, block=args.block,
                        device=args.device, bands=args.bands, time=when, progress=progress, model=model, dask_client=client,
                        force=args.force,
                    )
                except SegpipeError as exc:
                    fail(str(exc))
                except Exception as exc:  # one broken scene must not stop the others
                    # INFO, the level -v shows (DEBUG never reached the user): the traceback for the report
                    log.info("scene %s failed", public_url(image), exc_info=True)
                    fail(f"{public_url(image)}: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)")
                else:
                    state = "skipped (done already; --force redoes it)" if result.skipped else f"done ({result.seconds:.1f} s)"
                    bar.update(task, description=escape(f"{stem}: {state}"))
                    out.print(escape(f"{result.labels_path}  {result.quicklook_path}"), highlight=False, soft_wrap=True)
    finally:
        if client is not None:
            client.close()
    done = len(args.images) - len(failed)
    if not done:  # leave no empty output folders behind a run that produced nothing
        for folder in reversed(created):
            remove_if_empty(folder)
    where = f"; statistics in {Path(args.out) / STATS_STORE}" if done else ""
    out.print(escape(f"{done}/{len(args.images)} scene(s) done{where}"), highlight=False, soft_wrap=True)
    if failed:
        err.print(escape(f"{len(failed)} scene(s) failed: {', '.join(map(public_url, failed))}"), soft_wrap=True)
        return 1
    return 0


def screen_inputs(images: list[str], stem_of) -> dict[str, InputError]:
    """Per-input problems found before any work, by input: a local file that does not exist (URLs
    and GDAL ``/vsi`` paths are not checked), or an output name already taken. Outputs are named
    by file stem, so the first input with a stem keeps it and a later one fails."""
    from pipeline.raster.probe import check_exists

    rejected: dict[str, InputError] = {}
    owner: dict[str, str] = {}
    for image in images:
        try:
            check_exists(image)
        except InputError as exc:
            rejected[image] = exc
            continue
        stem = stem_of(image)
        if owner.setdefault(stem, image) != image:
            rejected[image] = InputError(
                image, f"has the same name '{stem}' as {owner[stem]}; both would write {stem}.labels.tif", "rename one, or run it with another --out folder"
            )
    return rejected


def check_class_table_of(store: Path, spec) -> None:
    """Refuse, before the model loads, a model whose classes contradict ``store``'s (see :mod:`pipeline.raster.entries`)."""
    from pipeline.raster.entries import check_store_accepts

    # an entry's time and scene are per input (checked again by segment_raster); here only the class table
    check_store_accepts(store, time=None, scene="", source=None, classes=[(c.id, c.name) for c in spec.classes])


def _dask_client(address: str):
    from pipeline.dask_client import dask_client

    return dask_client(address)
