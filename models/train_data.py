"""Training pairs for :mod:`models.train`: read ``(image, label)`` pairs (arrays, GeoTIFFs or NIfTI
files), check them against the spec and turn them into normalised samples with label indices.

Images are ``(C, Y, X)`` / ``(C, Z, Y, X)`` and labels ``(Y, X)`` / ``(Z, Y, X)`` (volumes: NIfTI
voxel axes ``(i, j, k[, c])`` transposed to ``(C, Z, Y, X)``, as the volume readers do; voxel
spacing in mm). Label values are the spec's class ids, mapped to logit indices in spec order; the
spec's ``nodata`` becomes :data:`IGNORE`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from models.normalize import foreground_stats, normalizer
from models.spec import ModelSpec
from pipeline.errors import InputError

log = logging.getLogger("models.train")  # the trainer's logger, as before these helpers had their own module

#: Label index of pixels the loss ignores: window padding and ``nodata`` (unlabelled) pixels.
IGNORE = -100

# (image, label): two file paths (GeoTIFFs for rasters, NIfTI for volumes), or arrays
# image (C, Y, X) / (C, Z, Y, X) and label (Y, X) / (Z, Y, X) holding class ids
Pair = Union[tuple[Union[str, Path], Union[str, Path]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Sample:
    """A normalised image ``(C, *spatial)`` float32 and its label indices ``(*spatial)`` int64."""

    name: str
    image: np.ndarray
    label: np.ndarray


def load_pair(spec: ModelSpec, pair: Pair, index: int) -> Sample:
    """The ``index``-th training pair as a :class:`Sample`: read (paths), checked, normalised as at inference.

    Raises:
        InputError: not a pair, arrays mixed with paths, an unreadable file, or a check of
            :func:`check_arrays` / :func:`to_indices` failed.
    """
    try:
        image, label = pair
    except (TypeError, ValueError) as exc:
        raise InputError(f"pair {index}", "is not an (image, label) pair", "give a list of (image, label) tuples") from exc
    if isinstance(image, np.ndarray) and isinstance(label, np.ndarray):
        name = f"pair {index}"
    elif isinstance(image, (str, Path)) and isinstance(label, (str, Path)):
        name = str(image)
        reader = _read_raster_pair if spec.task == "raster" else _read_volume_pair
        image, label = reader(spec, Path(image), Path(label))
    else:
        raise InputError(f"pair {index}", "mixes arrays and paths", "give two paths or two arrays")
    check_arrays(spec, name, image, label)
    stats = foreground_stats(image) if spec.normalize.kind == "zscore" else None
    return Sample(name, normalizer(spec.normalize, stats)(image), to_indices(spec, name, label))


def check_arrays(spec: ModelSpec, name: str, image: np.ndarray, label: np.ndarray) -> None:
    """Refuse an image that is not ``(C, *spatial)`` with the spec's channels, or a label not on its grid ``(*spatial)``."""
    dims = spec.spatial_dims
    axes = "(C, Y, X)" if dims == 2 else "(C, Z, Y, X)"
    if image.ndim != dims + 1:
        raise InputError(name, f"image has shape {image.shape}, expected {axes}", f"give a {dims + 1}-D image array")
    if image.shape[0] != spec.in_channels:
        raise InputError(name, f"{image.shape[0]} channels, model '{spec.name}' needs {spec.in_channels}", "set in_channels or pick channels")
    if label.shape != image.shape[1:]:
        raise InputError(name, f"label shape {label.shape} differs from image shape {image.shape[1:]}", "give a label on the image grid")


def to_indices(spec: ModelSpec, name: str, label: np.ndarray) -> np.ndarray:
    """Class ids -> logit indices (int64, same shape), the spec's ``nodata`` -> :data:`IGNORE`.

    Raises:
        InputError: a label value is neither a class id nor ``nodata``.
    """
    ids = {c: i for i, c in enumerate(spec.class_ids)}
    values = np.unique(label)
    unknown = [v for v in values.tolist() if v not in ids and v != spec.nodata]
    if unknown:
        raise InputError(
            name, f"label values {unknown[:10]} are not class ids {list(spec.class_ids)}", f"remap labels to the spec's ids (or {spec.nodata} = unlabelled)"
        )
    out = np.zeros(label.shape, dtype=np.int64)
    for value in values.tolist():
        if value == spec.nodata:
            out[label == value] = IGNORE
        elif ids[value]:
            out[label == value] = ids[value]
    unlabelled = int(np.count_nonzero(label == spec.nodata))
    if unlabelled:
        log.info("%s: %d nodata label pixels are unlabelled (left out of the loss)", name, unlabelled)
    return out


def _read_raster_pair(spec: ModelSpec, image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with _open_raster(image_path) as img, _open_raster(label_path) as lab:
        if lab.count != 1:
            raise InputError(label_path, f"label raster has {lab.count} bands", "give a single-band label raster")
        if (lab.height, lab.width) != (img.height, img.width) or not lab.transform.almost_equals(img.transform) or lab.crs != img.crs:
            raise InputError(label_path, f"label grid differs from {image_path.name}'s (shape, transform or CRS)", "rasterise the labels on the image grid")
        return img.read(), lab.read(1)


def _open_raster(path: Path):
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(path, f"cannot read raster: {exc}", "give a readable GeoTIFF") from exc


def _read_volume_pair(spec: ModelSpec, image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image_nii, label_nii = _load_nifti(image_path), _load_nifti(label_path)
    if spec.orientation:
        image_nii, label_nii = _reorient(image_nii, spec.orientation), _reorient(label_nii, spec.orientation)
    if label_nii.shape[:3] != image_nii.shape[:3] or not np.allclose(label_nii.affine, image_nii.affine, atol=1e-3):
        raise InputError(label_path, f"label grid differs from {image_path.name}'s (shape or affine)", "give labels on the image grid")
    zooms = tuple(float(z) for z in image_nii.header.get_zooms()[:3][::-1])
    if spec.spacing is not None and not np.allclose(zooms, spec.spacing, rtol=0.01):
        raise InputError(
            image_path,
            f"voxel spacing {zooms} mm (z, y, x) differs from the model's {spec.spacing}",
            "resample the pair to the model spacing first, or set spacing: null",
        )
    data = np.asarray(image_nii.dataobj)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(image_path, f"image has shape {data.shape}", "give a 3D volume (or 4D with channels last)")
    label = np.asarray(label_nii.dataobj)
    if label.ndim != 3:
        raise InputError(label_path, f"label has shape {label.shape}", "give a 3D label volume")
    # NIfTI voxel axes (i, j, k[, c]) -> (C, Z, Y, X), as the volume readers do
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0)), np.ascontiguousarray(label.T)


def _load_nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except (FileNotFoundError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(path, f"cannot read NIfTI: {exc}", "give a readable .nii or .nii.gz file") from exc


def _reorient(nii, axcodes: str):
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return nii.as_reoriented(ornt_transform(io_orientation(nii.affine), axcodes2ornt(tuple(axcodes))))
