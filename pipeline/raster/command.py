"""``segpipe raster IMAGE... --model MODEL --out DIR``: segment land-cover scenes.

Each scene writes ``DIR/<stem>.labels.tif`` (COG), ``DIR/<stem>.quicklook.png`` and appends to
``DIR/stats.zarr``. A scene that fails is reported and the others still run; the exit code is 1
when any scene failed (2 for a bad model or options, as for every segpipe command).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from pipeline.errors import InputError, SegpipeError

log = logging.getLogger(__name__)

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


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
    p.add_argument("--region-field", metavar="NAME", help="attribute naming each region (default: 'name' if present)")
    p.add_argument("--block", type=_positive, metavar="N", help="block size in pixels; bounds memory (default 1024 on CPU, 2048 on a GPU)")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--bands", type=_bands, metavar="1,2,3,4", help="1-based bands to feed the model, in order")
    p.add_argument("--time", metavar="ISO", help="run time recorded in stats.zarr (default: now, UTC)")
    p.add_argument("--dask-address", metavar="ADDR", help="run blocks on this Dask scheduler (DIR must be shared with the workers)")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of pixels")
    return value


def _device(text: str) -> str:
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return text


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.spec import load_spec
    from pipeline.raster.ingest import scene_stem
    from pipeline.raster.run import segment_raster
    from pipeline.raster.stats import to_datetime64

    spec = load_spec(args.model)
    if spec.task != "raster":
        raise InputError(args.model, f"model task is '{spec.task}'", "use a raster model with `segpipe raster`")
    when = to_datetime64(args.time)
    _check_unique_stems(args.images, scene_stem)
    client = _dask_client(args.dask_address) if args.dask_address else None
    model = None
    if client is None:
        from models.checkpoint import load_model

        model = load_model(spec, args.device)
    out = Console()
    err = Console(stderr=True)
    failed: list[str] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=False) as bar:
            for image in args.images:
                stem = scene_stem(image)
                task = bar.add_task(escape(f"{stem}: start"), total=None)

                def progress(stage: str, done: int, total: int, task=task, stem=stem) -> None:
                    bar.update(task, description=escape(f"{stem}: {stage}"), completed=done, total=total)

                try:
                    result = segment_raster(
                        image, spec, args.out, regions=args.regions, region_field=args.region_field, block=args.block,
                        device=args.device, bands=args.bands, time=when, progress=progress, model=model, dask_client=client,
                    )
                except SegpipeError as exc:
                    failed.append(image)
                    bar.update(task, description=escape(f"{stem}: failed"))
                    err.print(f"[red]error[/red] {escape(str(exc))}", soft_wrap=True)
                except Exception as exc:  # one broken scene must not stop the others
                    log.debug("scene %s failed", image, exc_info=True)
                    failed.append(image)
                    bar.update(task, description=escape(f"{stem}: failed"))
                    err.print(f"[red]error[/red] {escape(str(image))}: unexpected {type(exc).__name__}: {escape(str(exc))} (run with -v for details)", soft_wrap=True)
                else:
                    bar.update(task, description=escape(f"{stem}: done ({result.seconds:.1f} s)"))
                    out.print(escape(f"{result.labels_path}  {result.quicklook_path}"), highlight=False, soft_wrap=True)
    finally:
        if client is not None:
            client.close()
    done = len(args.images) - len(failed)
    where = f"; statistics in {Path(args.out) / 'stats.zarr'}" if done else ""
    out.print(escape(f"{done}/{len(args.images)} scene(s) done{where}"), highlight=False, soft_wrap=True)
    if failed:
        err.print(escape(f"{len(failed)} scene(s) failed: {', '.join(failed)}"), soft_wrap=True)
        return 1
    return 0


def _check_unique_stems(images: list[str], stem_of) -> None:
    """Outputs are named by file stem: two inputs with one stem would overwrite each other."""
    seen: dict[str, str] = {}
    for image in images:
        stem = stem_of(image)
        if stem in seen and seen[stem] != image:
            raise InputError(image, f"has the same name '{stem}' as {seen[stem]}; both would write {stem}.labels.tif", "rename one, or run them with different --out folders")
        seen[stem] = image


def _dask_client(address: str):
    from pipeline.dask_client import dask_client

    return dask_client(address)
