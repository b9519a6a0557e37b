"""``segpipe volume INPUT... --model MODEL --out DIR``: segment NIfTI volumes and DICOM series (single-frame or enhanced multi-frame).

Prints a progress bar over studies (and the engine blocks of the current study), a summary table,
and a failures table; exits 1 when any study failed (2 for unusable arguments or model).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli_types import device_name
from pipeline.errors import InputError

if TYPE_CHECKING:
    from models.spec import ModelSpec


def _block(values: list[int] | None) -> tuple[int, int, int] | None:
    if values is None:
        return None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise InputError("--block", f"{values} is not one or three positive sizes", "write --block 128 or --block 64 128 128 (z y x voxels)")
    return tuple(values)  # type: ignore[return-value]


def _index(value: str) -> int:
    try:
        index = int(value)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a volume number (0 for the first volume of a 4D NIfTI)")
    return index


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "volume",
        help="segment NIfTI volumes and DICOM series",
        description="Segment CT/MRI studies with a 3D model: DIR/<stem>.labels.nii.gz on the input grid, "
        "colour tables, a DICOM SEG for DICOM input, DIR/<stem>.stats.json and DIR/stats.zarr.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", type=Path,
        help="a NIfTI file (.nii, .nii.gz, or a .hdr/.img pair), a DICOM series folder, or an enhanced multi-frame DICOM file",
    )
    p.add_argument("--model", required=True, help="model name from `segpipe models` or a path to a YAML spec")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--device", default="auto", type=device_name, help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dask-address", metavar="ADDR", help="run one task per study on this Dask scheduler (shared file system)")
    p.add_argument("--series-uid", metavar="UID", help="the SeriesInstanceUID to read from DICOM folders holding several series")
    p.add_argument("--volume-index", type=_index, metavar="N", help="4D NIfTI: the volume to segment (0-based)")
    p.add_argument("--block", type=int, nargs="+", metavar="N", help="engine block on the model grid: N or Z Y X voxels")
    p.add_argument(
        "--force", action="store_true",
        help="redo studies whose outputs are already present, and replace outputs made from another input of the same name "
        "(studies done with another model, or whose input changed since, are redone anyway)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.spec import load_spec
    from pipeline.outputs import check_stats_store, prepare_output_dir, remove_if_empty
    from pipeline.volume.run import STATS_STORE

    spec = load_spec(args.model)  # a bad spec exits 2 before --out is created
    created = [p for p in (*reversed(args.out.parents), args.out) if not p.exists()]
    out_dir = prepare_output_dir(args.out)  # a bad --out fails before anything is read or computed
    try:
        check_stats_store(out_dir / STATS_STORE, "volume")
        return _segment(args, out_dir, spec)
    finally:
        for folder in reversed(created):
            remove_if_empty(folder)  # nothing was written (bad model, or every study failed)


def _segment(args: argparse.Namespace, out_dir: Path, spec: ModelSpec) -> int:
    from rich.console import Console

    from pipeline.volume.batch import segment_volumes
    from pipeline.volume.options import VolumeOptions

    options = VolumeOptions(
        device=args.device, block=_block(args.block), force=args.force, series_uid=args.series_uid, volume_index=args.volume_index
    )
    err = Console(stderr=True)
    with _RichProgress(err) as progress:
        report = segment_volumes(args.inputs, spec, out_dir, options, progress=progress, dask_address=args.dask_address)
    out = Console()
    _print_summary(out, report)
    return 0 if report.ok else 1


class _RichProgress:
    """A :class:`pipeline.volume.batch.BatchProgress` drawing rich bars: studies, and blocks of the current study."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False
        )
        self.studies = None
        self.block_task = None

    def __enter__(self) -> _RichProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def study_started(self, study: str, index: int, total: int) -> None:
        if self.studies is None:
            self.studies = self.progress.add_task("studies", total=total)
        if self.block_task is None:
            self.block_task = self.progress.add_task("blocks", total=None, visible=False)
        self.progress.update(self.block_task, description=f"  {study}", completed=0, total=None, visible=True)

    def blocks(self, done: int, total: int) -> None:
        if self.block_task is not None:
            self.progress.update(self.block_task, completed=done, total=total)

    def study_finished(self, outcome) -> None:
        if self.studies is not None:
            self.progress.advance(self.studies)


def _print_summary(console, report) -> None:
    from rich.table import Table

    if report.results:
        table = Table(title="segmented studies")
        for column in ("study", "status", "labels", "seconds", "largest label (mL)"):
            table.add_column(column, overflow="fold")
        for r in report.results:
            present = [lab for lab in r.stats.labels if lab.label_id != 0 and lab.voxel_count]
            largest = max(present, key=lambda lab: lab.volume_ml, default=None)
            table.add_row(
                r.study,
                _status(r),
                str(r.outputs.labels),
                f"{r.seconds:.1f}",
                f"{largest.name}: {largest.volume_ml:.1f}" if largest else "-",
            )
        console.print(table)
    if report.failures:
        table = Table(title=f"{len(report.failures)} failed", style="red")
        table.add_column("input", overflow="fold")
        table.add_column("problem and fix", overflow="fold")
        for failure in report.failures:
            table.add_row(failure.source, failure.message)
        console.print(table)
    if report.stats_store.exists():  # absent when every study failed
        console.print(f"statistics: {report.stats_store}")


def _status(result) -> str:
    if result.skipped:
        return "skipped (done)"
    if result.redone:
        return f"redone: old outputs {result.redone}"
    return "ok"
