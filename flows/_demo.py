"""Generate the embedded demo inputs that a catalog with a ``demo:`` recipe names but that do not exist yet.

Scenes are synthetic 10 m Sentinel-2-like scenes (:mod:`pipeline.demo.scene`, seeds ``seed``,
``seed + 1``, ...) that tile a strip west to east (scene ``i`` starts ``i`` scene widths east of the
first), so per-region areas add up over scenes; the regions are the district polygons of the whole strip; studies are CT phantoms (:mod:`pipeline.demo.phantom`). Each file is
written under a temporary name and renamed, so a concurrent run never reads half a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from flows.catalog import DemoRecipe, is_remote

log = logging.getLogger(__name__)

CRS = "EPSG:32633"  # UTM 33N, WGS 84
ORIGIN = (500_000.0, 5_350_000.0)  # upper-left corner of the first scene, metres
PIXEL_M = 10.0


def ensure_demo_scenes(recipe: DemoRecipe, scenes: Sequence[str], regions: str | None) -> list[Path]:
    """Write every missing local scene (and the regions file) of a demo catalog; return what was written."""
    from pipeline.demo.scene import synthetic_scene, write_regions_geojson, write_scene_geotiff

    size = (recipe.size[0], recipe.size[1])
    strip = (size[0], size[1] * len(scenes))
    written = []
    for index, scene in enumerate(scenes):
        if _missing(scene):
            image, _truth = synthetic_scene(recipe.seed + index, size)
            origin = (ORIGIN[0] + index * size[1] * PIXEL_M, ORIGIN[1])
            written.append(_atomic(Path(scene), lambda tmp, image=image, origin=origin: write_scene_geotiff(tmp, image, crs=CRS, origin=origin, pixel=PIXEL_M)))
    if regions and _missing(regions):
        written.append(_atomic(Path(regions), lambda tmp: write_regions_geojson(tmp, strip, crs=CRS, origin=ORIGIN, pixel=PIXEL_M)))
    for path in written:
        log.info("demo input written: %s", path)
    return written


def ensure_demo_studies(recipe: DemoRecipe, studies: Sequence[str]) -> list[Path]:
    """Write every missing local study (a CT phantom NIfTI) of a demo catalog; return what was written."""
    from pipeline.demo.phantom import synthetic_ct, write_ct_nifti

    shape = (recipe.size[0], recipe.size[1], recipe.size[2])
    written = []
    for index, study in enumerate(studies):
        if _missing(study):
            hu, _labels, affine = synthetic_ct(recipe.seed + index, shape)
            written.append(_atomic(Path(study), lambda tmp, hu=hu, affine=affine: write_ct_nifti(tmp, hu, affine)))
    for path in written:
        log.info("demo input written: %s", path)
    return written


def _missing(item: str) -> bool:
    return not is_remote(item) and not Path(item).exists()


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling (same suffixes, so writers pick the right format) and rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffixes}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
