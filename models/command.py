"""``segpipe models`` (list the catalog) and ``segpipe train`` (fit a spec on labelled images)."""

from __future__ import annotations

import argparse

from pipeline.cli_types import device_name, fraction, positive_float, positive_int
from pipeline.errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the model catalog",
        description="List the model specs in catalogs/models/ (and $SEGPIPE_CATALOGS): task, architecture, classes, "
        "window, and whether their weights are present. Pass a name as --model to segpipe raster/volume.",
    )
    p.set_defaults(func=run_models)

    t = subparsers.add_parser(
        "train",
        help="train a model spec on labelled images and write a safetensors checkpoint",
        description="Images and labels pair up in order: GeoTIFF image + single-band label GeoTIFF for raster "
        "specs, NIfTI image + label NIfTI for volume specs. Labels hold the spec's class ids.",
    )
    t.add_argument("spec", metavar="SPEC", help="catalog name (see `segpipe models`) or path to a spec YAML")
    t.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help="training images")
    t.add_argument("--labels", nargs="+", required=True, metavar="LABEL", help="label files, one per image, same order")
    t.add_argument("--out", required=True, metavar="CHECKPOINT", help="output .safetensors file")
    t.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    t.add_argument("--steps", type=positive_int, default=None, help="steps per epoch (default: cover the training pixels about once)")
    t.add_argument("--batch", type=positive_int, default=4, help="windows per step (default 4)")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--val-fraction", type=fraction, default=0.2, help="share of pairs held out for validation (default 0.2)")
    t.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N (default: cuda when available)")
    t.set_defaults(func=run_train)


def run_models(args: argparse.Namespace) -> int:
    """Print the catalog as a table."""
    from rich.markup import escape
    from rich.table import Table

    from models.catalog import list_catalog

    entries = list_catalog()
    table = Table(title="segpipe model catalog")
    for column in ("name", "task", "architecture", "classes", "window", "checkpoint"):
        table.add_column(column, no_wrap=column in ("name", "window"))
    for e in entries:
        if e.spec is None:
            table.add_row(escape(e.name), "-", "[red]invalid[/red]", escape(e.error or ""), "-", "-")
            continue
        s = e.spec
        names = ", ".join(c.name for c in s.classes[:4]) + (", ..." if len(s.classes) > 4 else "")
        state = {
            "none": "none (random init)",
            "present": escape(s.checkpoint.name if s.checkpoint else ""),
            "missing": "[yellow]missing[/yellow] (run segpipe train)",
        }
        cells = (s.name, s.task, s.architecture, f"{s.n_classes}: {names}", "x".join(map(str, s.window)))
        table.add_row(*(escape(c) for c in cells), state[e.checkpoint_state])
    console = _console()
    console.print(table)
    if not entries:
        console.print("no model specs found (catalogs/models/*.yaml, or folders in $SEGPIPE_CATALOGS)")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train, showing a progress bar and the validation Dice per epoch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.spec import load_spec
    from models.train import TrainConfig, TrainProgress, train

    if len(args.images) != len(args.labels):
        raise InputError("--labels", f"{len(args.images)} images but {len(args.labels)} labels", "give one label file per image, in the same order")
    spec = load_spec(args.spec)
    config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, lr=args.lr,
        seed=args.seed, val_fraction=args.val_fraction, device=args.device,
    )
    console = _console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("epoch 1", total=None, loss="-")

        def show(event: TrainProgress) -> None:
            bar.update(task, description=f"epoch {event.epoch}/{event.epochs}", completed=event.step, total=event.steps, loss=f"{event.loss:.4f}")
            if event.step == event.steps:
                dice = "n/a" if event.val_dice is None else f"{event.val_dice:.3f}"
                bar.console.print(f"epoch {event.epoch}/{event.epochs}: last loss {event.loss:.4f}, validation mean Dice {dice}")

        result = train(spec, list(zip(args.images, args.labels)), args.out, config, progress=show)
    console.print(
        f"wrote {result.checkpoint} ({result.n_train} training / {result.n_val} validation pairs, "
        f"{result.epochs} x {result.steps_per_epoch} steps, {result.seconds:.1f} s)"
    )
    console.print(f"use it: set `checkpoint: {result.checkpoint.resolve()}` in the spec of '{spec.name}'")
    return 0


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)
