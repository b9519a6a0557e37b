"""The demo job: synthetic inputs -> the real raster and volume pipelines -> scores against the truth.

Layout of ``out_dir`` (every input is regenerated, bit for bit, on each run)::

    landcover/demo-scene.tif            input: 4-band uint16 GeoTIFF, EPSG:32633, 10 m (B, G, R, NIR)
    landcover/demo-scene.truth.tif      the scene's ground truth (class ids), same grid
    landcover/districts.geojson         three named district polygons (WGS 84)
    landcover/demo-scene.labels.tif     output: label COG, colour table and class names
    landcover/demo-scene.quicklook.png  output: RGB | labels preview
    landcover/stats.zarr                output: area_m2 by (time, scene, region, class)
    ct/demo-ct.nii.gz                   input: CT phantom, int16 HU, LPS, 3.5 x 3.5 x 5 mm
    ct/demo-ct.truth.nii.gz             the phantom's organ labels, same grid
    ct/demo-ct.labels.nii.gz            output: labels on exactly the input grid (+ .json/.txt/.ctbl)
    ct/demo-ct.stats.json, stats.zarr   output: volume_ml, voxel_count, intensity_* by (study, label)

Seeds :data:`SCENE_SEED` and :data:`PHANTOM_SEED` are never used to train the demo checkpoints
(see :mod:`pipeline.demo.train`). Scores are computed on the written outputs read back from disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.demo.metrics import confusion_matrix, dice_per_class, iou_per_class

log = logging.getLogger(__name__)

SCENE_SEED = 2024
PHANTOM_SEED = 2025
SCENE_SIZE = (1024, 1024)  # (Y, X) pixels
LANDCOVER_MODEL = "demo-landcover"
CT_MODEL = "demo-ct"
SCENE_CRS = "EPSG:32633"
SCENE_ORIGIN = (500_000.0, 5_350_000.0)  # upper-left corner, metres (UTM 33N, Lower Austria)
PIXEL_M = 10.0

Progress = Callable[[str], None]  # called with a short description of the step starting


@dataclass(frozen=True)
class LandcoverDemo:
    """The land-cover half of the demo.

    Attributes:
        scene, truth, regions: the generated inputs.
        labels, quicklook, stats_store: the pipeline's outputs.
        class_names: in class-id order (ids 0..4).
        iou: per-class IoU of ``labels`` against ``truth``, in class order.
        miou: mean of ``iou``.
        area_ha: hectares per ``(region, class)`` of this run, ``{region: {class: ha}}``.
        seconds: wall time of :func:`pipeline.raster.run.segment_raster`.
    """

    scene: Path
    truth: Path
    regions: Path
    labels: Path
    quicklook: Path
    stats_store: Path
    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    miou: float
    area_ha: dict[str, dict[str, float]]
    seconds: float


@dataclass(frozen=True)
class CtDemo:
    """The CT half of the demo.

    Attributes:
        volume, truth: the generated phantom and its labels (NIfTI, LPS).
        labels, stats_store: the pipeline's outputs.
        label_names: in label-id order (ids 0..6).
        dice: per-label Dice of ``labels`` against ``truth``, in label order.
        organ_dice: mean Dice over the organs (labels 2..6: lungs, liver, spleen, kidneys, spine).
        volume_ml: predicted volume per label, millilitres.
        truth_ml: true volume per label, millilitres.
        seconds: wall time of :func:`pipeline.volume.run.segment_volume`.
    """

    volume: Path
    truth: Path
    labels: Path
    stats_store: Path
    label_names: tuple[str, ...]
    dice: tuple[float, ...]
    organ_dice: float
    volume_ml: dict[str, float]
    truth_ml: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class DemoResult:
    """Both halves of the demo and the total wall time."""

    out_dir: Path
    landcover: LandcoverDemo
    ct: CtDemo
    seconds: float


def run_demo(out_dir: str | Path = "segpipe-demo", *, device: str = "auto", progress: Progress | None = None) -> DemoResult:
    """Run the whole demo into ``out_dir`` (layout in the module docstring) and score it.

    Args:
        out_dir: output folder (created; the demo's own files in it are overwritten).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: optional ``callable(step_description)``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_before_work(out_dir, device)
    landcover = run_landcover_demo(out_dir / "landcover", device=device, progress=progress)
    ct = run_ct_demo(out_dir / "ct", device=device, progress=progress)
    return DemoResult(out_dir, landcover, ct, time.perf_counter() - started)


def _check_before_work(out_dir: Path, device: str) -> None:
    """Fail at once, with one message, on a device that is not here or an unusable output folder."""
    from pipeline.outputs import check_stats_store, prepare_output_dir
    from pipeline.windows import auto_device

    auto_device(device)
    for part, kind in (("landcover", "raster"), ("ct", "volume")):
        check_stats_store(out_dir / part / "stats.zarr", kind)
    folders = (out_dir, out_dir / "landcover", out_dir / "ct")
    blocked = [f for f in folders if f.exists() and not f.is_dir()]
    for folder in blocked or folders:  # a file in the way raises before any folder is made
        prepare_output_dir(folder)


def run_landcover_demo(out_dir: str | Path, *, device: str = "auto", progress: Progress | None = None) -> LandcoverDemo:
    """Generate the scene, segment it with ``demo-landcover`` and score the label COG against the truth."""
    import rasterio

    from models.spec import load_spec
    from pipeline.demo.scene import CLASS_NAMES, synthetic_scene, write_regions_geojson, write_scene_geotiff
    from pipeline.raster.run import segment_raster

    out_dir = Path(out_dir)
    geo = dict(crs=SCENE_CRS, origin=SCENE_ORIGIN, pixel=PIXEL_M)
    _say(progress, f"generating a {SCENE_SIZE[1]} x {SCENE_SIZE[0]} synthetic scene (seed {SCENE_SEED})")
    image, truth = synthetic_scene(SCENE_SEED, SCENE_SIZE)
    scene = write_scene_geotiff(out_dir / "demo-scene.tif", image, **geo)
    truth_path = write_scene_geotiff(out_dir / "demo-scene.truth.tif", truth, band_names=None, **geo)
    regions = write_regions_geojson(out_dir / "districts.geojson", SCENE_SIZE, **geo)

    _say(progress, f"segmenting {scene.name} with {LANDCOVER_MODEL}")
    spec = load_spec(LANDCOVER_MODEL)
    result = segment_raster(scene, spec, out_dir, regions=regions, region_field="name", device=device)
    with rasterio.open(result.labels_path) as src:
        predicted = src.read(1)
    cm = confusion_matrix(predicted, truth, spec.class_ids)
    iou = tuple(float(v) for v in iou_per_class(cm))
    area = result.stats["area_ha"]
    area_ha = {
        str(region): {str(cls): float(area.sel(region=region, **{"class": cls})) for cls in area["class"].values}
        for region in area["region"].values
    }
    return LandcoverDemo(
        scene=scene, truth=truth_path, regions=regions, labels=result.labels_path, quicklook=result.quicklook_path,
        stats_store=result.stats_path, class_names=tuple(CLASS_NAMES), iou=iou, miou=float(np.nanmean(iou)),
        area_ha=area_ha, seconds=result.seconds,
    )


def run_ct_demo(out_dir: str | Path, *, device: str = "auto", progress: Progress | None = None) -> CtDemo:
    """Generate the CT phantom (LPS NIfTI), segment it with ``demo-ct`` and score the labels against the truth."""
    import nibabel as nib

    from models.spec import load_spec
    from pipeline.demo.phantom import LABEL_NAMES, synthetic_ct, write_ct_nifti
    from pipeline.volume.options import VolumeOptions
    from pipeline.volume.run import segment_volume

    out_dir = Path(out_dir)
    _say(progress, f"generating a CT phantom (seed {PHANTOM_SEED}), stored LPS")
    hu, truth, affine = synthetic_ct(PHANTOM_SEED)
    volume = write_ct_nifti(out_dir / "demo-ct.nii.gz", hu, affine)
    truth_path = write_ct_nifti(out_dir / "demo-ct.truth.nii.gz", truth, affine)

    _say(progress, f"segmenting {volume.name} with {CT_MODEL}")
    spec = load_spec(CT_MODEL)
    result = segment_volume(volume, spec, out_dir, VolumeOptions(device=device, force=True))
    predicted = np.asarray(nib.load(str(result.outputs.labels)).dataobj).transpose(2, 1, 0)
    cm = confusion_matrix(predicted, truth, spec.class_ids)
    dice = tuple(float(v) for v in dice_per_class(cm))
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    truth_counts = np.bincount(truth.ravel(), minlength=len(LABEL_NAMES))
    return CtDemo(
        volume=volume, truth=truth_path, labels=result.outputs.labels, stats_store=out_dir / "stats.zarr",
        label_names=tuple(LABEL_NAMES), dice=dice, organ_dice=float(np.nanmean(dice[2:])),
        volume_ml={lab.name: float(lab.volume_ml) for lab in result.stats.labels},
        truth_ml={name: float(truth_counts[i]) * voxel_ml for i, name in enumerate(LABEL_NAMES)},
        seconds=result.seconds,
    )


def _say(progress: Progress | None, message: str) -> None:
    log.info("%s", message)
    if progress is not None:
        progress(message)
