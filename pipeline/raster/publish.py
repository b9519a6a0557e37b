"""One scene's outputs: the label COG, the quicklook and the scene's entry in ``stats.zarr``.

Every file is written under a temporary name and renamed into place when complete, and the
statistics entry is appended last: a scene that fails on the way leaves no output that looks
complete. What a killed run was writing is removed by the next run (only names segpipe made).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import xarray as xr

from models.spec import ModelSpec
from pipeline.outputs import remove_stale_temporaries, temporary_name
from pipeline.raster.cog import write_label_cog
from pipeline.raster.ingest import every_pixel_valid, read_preview
from pipeline.raster.probe import RasterInfo
from pipeline.raster.provenance import Provenance
from pipeline.raster.quicklook import rgb_bands, write_quicklook
from pipeline.raster.regions import Regions
from pipeline.raster.stats import append_stats, compute_stats
from pipeline.timing import Stopwatch

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total); stages: ingest, segment, stats
STATS_STORE = "stats.zarr"


def stage_progress(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return functools.partial(progress, stage)

@dataclass(frozen=True)
class Entry:
    """Where one scene's statistics go in ``stats.zarr`` and what made them."""

    time: np.datetime64
    scene: str
    provenance: Provenance
    force: bool = False


def write_outputs(
    work: Path, image, spec: ModelSpec, info: RasterInfo, regions: Regions | None, out_dir: Path, *, entry: Entry, block: int, progress, watch: Stopwatch
):
    """Write the label COG and the quicklook under temporary names, rename them into place, and only
    then append the statistics: a scene that fails on the way leaves no output that looks complete
    (no label COG, quicklook or ``stats.zarr`` entry of this run; a crash between the renames and
    the append leaves files without an entry, which the next run redoes)."""
    import zarr

    stem = entry.scene
    group = zarr.open_group(work, mode="r", use_consolidated=False)
    # an all-valid mask changes nothing: skip reading it (twice) when the ingest saw no invalid pixel
    labels, mask = group["labels"], None if every_pixel_valid(work) else group["mask"]
    labels_path, quicklook_path = out_dir / f"{stem}.labels.tif", out_dir / f"{stem}.quicklook.png"
    staged = {path: temporary_name(path) for path in (labels_path, quicklook_path)}  # <name>.tmp-<8 hex>, renamed last
    for path in staged:
        _remove_stale_staging(path)
    published: list[Path] = []
    try:
        with watch.stage("cog"):
            write_label_cog(labels, mask, info, spec.classes, staged[labels_path], nodata=spec.nodata, model=spec.name)
        stats, stats_path = xr.Dataset(), out_dir / STATS_STORE
        if regions is not None:  # None: no region meets the scene, nothing to add to the store
            with watch.stage("stats"):
                stats = compute_stats(labels, mask, info, regions, spec.classes, block=block, progress=stage_progress(progress, "stats"))
        with watch.stage("quicklook"):
            rgb = rgb_bands(image, info.bands)
            write_quicklook(image, staged[labels_path], spec.classes, staged[quicklook_path], rgb=rgb, preview=read_preview(work))
        moves = [(_aux(staged[labels_path]), _aux(labels_path)), (staged[labels_path], labels_path), (staged[quicklook_path], quicklook_path)]
        for source, final in moves:  # the sidecar first: a COG in place has its class names
            source.replace(final)
            published.append(final)
        if regions is not None:
            with watch.stage("stats"):
                stats_path = append_stats(stats, stats_path, time=entry.time, scene=stem, provenance=entry.provenance, force=entry.force)
    except BaseException:
        for path in published:  # this run's files, without their statistics entry: not left looking complete
            path.unlink(missing_ok=True)
        for path in staged.values():
            for leftover in (path, _aux(path)):
                leftover.unlink(missing_ok=True)
        raise
    return labels_path, stats_path, quicklook_path, stats


def _aux(path: Path) -> Path:
    return path.with_name(path.name + ".aux.xml")


def _remove_stale_staging(final: Path) -> None:
    """Remove what a killed run was writing for ``final``, and nothing else: the staged file
    (``<name>.tmp-<8 hex>``) and its ``.aux.xml``, and the writers' own hidden temporaries
    (``.<name>[.tmp-<8 hex>].<8 hex>.tmp.tif|cog.tif|aux.xml|png``, see :mod:`pipeline.raster.cog` and
    :mod:`pipeline.raster.quicklook`). Called under the scene's work lock: no live run of this scene writes them."""
    remove_stale_temporaries(final)
    name = re.escape(final.name)
    ours = re.compile(rf"{name}\.tmp-[0-9a-f]{{8}}\.aux\.xml|\.{name}(\.tmp-[0-9a-f]{{8}})?\.[0-9a-f]{{8}}\.(tmp\.tif|cog\.tif|aux\.xml|png)")
    for stale in final.parent.glob(f"*{glob_escape(final.name)}*"):
        if ours.fullmatch(stale.name):
            log.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)
