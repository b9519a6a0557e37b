"""``segpipe demo``: the main job on embedded synthetic data, scored against the known truth."""

from __future__ import annotations

import argparse

from pipeline.cli_types import device_name
from pipeline.demo.run import DemoResult, run_demo

EPILOG = """\
outputs (DIR defaults to ./segpipe-demo):
  DIR/landcover/demo-scene.tif            synthetic 4-band scene (EPSG:32633, 10 m) and
  DIR/landcover/demo-scene.truth.tif      its ground truth; DIR/landcover/districts.geojson
  DIR/landcover/demo-scene.labels.tif     label COG (colour table, class names, overviews)
  DIR/landcover/demo-scene.quicklook.png  RGB | labels preview
  DIR/landcover/stats.zarr                area_m2 by time, scene, region, class (each run adds a time)
  DIR/ct/demo-ct.nii.gz                   CT phantom (HU, LPS, 3.5 x 3.5 x 5 mm) and
  DIR/ct/demo-ct.truth.nii.gz             its organ labels
  DIR/ct/demo-ct.labels.nii.gz            labels on the input grid (+ .json, .txt, .ctbl)
  DIR/ct/stats.zarr                       volume_ml, voxel_count, intensity_* by study, label

Inputs are regenerated on every run. It all runs on a CPU in well under a minute; the models are small demo checkpoints trained
on other synthetic seeds (catalogs/weights/README.md), not models for real data.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job on embedded synthetic data",
        description="Segment a synthetic land-cover scene and a synthetic CT phantom with the demo models, "
        "write every output, and score the results against the known truth.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="segpipe-demo", metavar="DIR", help="output folder (default: ./segpipe-demo)")
    p.add_argument("--device", default="auto", type=device_name, help="where the models run: auto | cpu | cuda | cuda:N (default: auto)")
    p.set_defaults(func=_run)



def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    with console.status("starting", spinner="dots") as status:
        result = run_demo(args.out, device=args.device, progress=lambda message: status.update(message))
    print_result(console, result)
    return 0


def print_result(console, result: DemoResult) -> None:
    """Print what the demo wrote, its scores, area and volume statistics, and how to query them."""
    from rich.table import Table

    lc, ct = result.landcover, result.ct
    console.rule("[bold]Land cover[/bold]")
    console.print(f"input    {lc.scene}  (truth {lc.truth.name}, regions {lc.regions.name})")
    console.print(f"labels   {lc.labels}")
    console.print(f"preview  {lc.quicklook}")
    console.print(f"stats    {lc.stats_store}")
    console.print(f"[bold]mIoU against the truth: {lc.miou:.3f}[/bold]")
    scores = Table()
    scores.add_column("class")
    scores.add_column("IoU", justify="right")
    for name, value in zip(lc.class_names, lc.iou):
        scores.add_row(name, f"{value:.3f}")
    console.print(scores)
    console.print("Area per district (ha), from stats.zarr:")
    areas = Table()
    areas.add_column("district")
    for name in lc.class_names:
        areas.add_column(name, justify="right")
    for region, per_class in lc.area_ha.items():
        areas.add_row(region, *(f"{per_class.get(name, 0.0):,.1f}" for name in lc.class_names))
    console.print(areas)

    console.rule("[bold]CT[/bold]")
    console.print(f"input    {ct.volume}  (LPS, truth {ct.truth.name})")
    console.print(f"labels   {ct.labels}")
    console.print(f"stats    {ct.stats_store}")
    console.print(f"[bold]Dice against the truth: organ mean {ct.organ_dice:.3f}[/bold]")
    organs = Table()
    for column, justify in (("label", "left"), ("Dice", "right"), ("volume mL", "right"), ("true mL", "right")):
        organs.add_column(column, justify=justify)
    for name, value in zip(ct.label_names[1:], ct.dice[1:]):
        organs.add_row(name, f"{value:.3f}", f"{ct.volume_ml.get(name, 0.0):,.1f}", f"{ct.truth_ml[name]:,.1f}")
    console.print(organs)

    console.rule("[bold]Query the statistics with xarray[/bold]")
    console.print(
        "python -c \"import xarray as xr; "
        f"ds = xr.open_zarr('{lc.stats_store}'); "
        "print(ds.area_m2.sel({'class': 'forest'}).to_series())\"",
        soft_wrap=True, highlight=False, markup=False,
    )
    console.print(
        "python -c \"import xarray as xr; "
        f"ds = xr.open_zarr('{ct.stats_store}'); "
        "print(ds.volume_ml.sel(label='liver').to_series())\"",
        soft_wrap=True, highlight=False, markup=False,
    )
    console.print(f"done in {result.seconds:.0f} s (land cover {lc.seconds:.1f} s, CT {ct.seconds:.1f} s)")
