"""Read a study (a NIfTI file or a DICOM series folder) into a :class:`~pipeline.volume.volume.Volume`.

Every unusable input raises :class:`pipeline.errors.InputError` naming the file, the problem and the fix.
See :mod:`pipeline.volume.volume` for the axis convention (``data[z, y, x]``, affine on ``(x, y, z, 1)``).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.volume.volume import HeaderInfo, Volume, _as_rows

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def study_stem(path: str | Path) -> str:
    """Output stem of a study: the file name without ``.nii``/``.nii.gz``, or the DICOM folder name."""
    path = Path(path)
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def read_volume(path: str | Path, *, series_uid: str | None = None, volume_index: int | None = None) -> Volume:
    """Read a 3D study.

    Args:
        path: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series (or several, see ``series_uid``).
        series_uid: DICOM only: the SeriesInstanceUID to read when the folder holds several series.
        volume_index: NIfTI only: which volume of a 4D image to read (0-based).

    Returns:
        The volume, ``data`` float32 ``(Z, Y, X)``, ``affine`` ``(x, y, z, 1)`` -> RAS mm.

    Raises:
        InputError: the path is missing, of an unknown kind, truncated, not 3D, empty, holds NaN/inf,
            or (DICOM) holds several series, misses slices or is unevenly spaced.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    if path.is_dir():
        from pipeline.volume.dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid)
    if is_nifti(path):
        return read_nifti(path, volume_index=volume_index)
    if path.suffix.lower() in (".dcm", ".ima", ""):
        raise InputError(path, "a single DICOM file, not a series", f"pass the series folder instead: {path.parent}")
    raise InputError(path, f"unsupported file type '{path.suffix}'", "give a NIfTI file (.nii, .nii.gz) or a DICOM series folder")


def read_nifti(path: str | Path, *, volume_index: int | None = None) -> Volume:
    """Read a NIfTI-1/2 file (see :func:`read_volume`). Scaling (scl_slope/scl_inter) is applied."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(path, f"cannot open as NIfTI ({exc})", "check that the file is a complete NIfTI file; re-export or re-copy it") from exc
    shape = tuple(int(s) for s in img.shape)
    index = _check_shape(path, shape, volume_index)
    try:
        proxy = img.dataobj if index is None else img.dataobj[..., index]
        raw = np.asanyarray(proxy)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(path, f"file is truncated or corrupt, the voxel data cannot be read ({exc})", "re-export or re-copy the file (a .nii.gz must decompress completely)") from exc
    raw = raw.reshape(raw.shape[:3])
    data = raw.astype(np.float32, copy=False).T  # (X, Y, Z) -> (Z, Y, X); C-contiguous for NIfTI's Fortran order
    data = np.ascontiguousarray(data)
    _check_finite(path, data)
    affine = np.asarray(img.affine, dtype=np.float64)
    info = _header_info(img.header, affine)
    units = info.xyz_units
    if units and units not in ("mm", "unknown"):
        log.warning("%s: spatial units are %s, statistics assume millimetres", path, units)
    return Volume(data=data, affine=affine, modality="unknown", source=path, header=info)


def _header_info(header, affine: np.ndarray) -> HeaderInfo:
    """qform/sform (and their codes) of a NIfTI header; a plain affine for other formats."""
    if not hasattr(header, "get_qform"):
        return HeaderInfo.from_affine(affine, code=0)
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    units = header.get_xyzt_units()[0] or "unknown"
    return HeaderInfo(
        qform=_as_rows(header.get_qform() if qform is None else qform),
        qform_code=int(qcode),
        sform=_as_rows(header.get_sform() if sform is None else sform),
        sform_code=int(scode),
        xyz_units=str(units),
    )


def _check_shape(path: Path, shape: tuple[int, ...], volume_index: int | None) -> int | None:
    """Validate a NIfTI shape ``(X, Y, Z[, T, ...])``; return the 4th-axis index to read (None for 3D)."""
    if 0 in shape:
        raise InputError(path, f"zero-size dimension in shape {shape}: the image holds no voxels", "re-export the volume; every dimension must be >= 1")
    if len(shape) < 3 or min(shape[:3]) == 1:
        raise InputError(path, f"2D image (shape {shape}), a 3D volume is needed", "give a 3D volume with at least 2 voxels along each axis; use `segpipe raster` for 2D images")
    extra = shape[3:]
    if not extra or int(np.prod(extra)) == 1:
        if volume_index not in (None, 0):
            raise InputError(path, f"--volume-index {volume_index} given but the image is 3D", "drop --volume-index, or volume_index= from Python")
        return 0 if extra else None
    if len(extra) > 1:
        raise InputError(path, f"{len(shape)}D image (shape {shape}) not supported", "extract one 3D volume first (e.g. with fslroi)")
    n = extra[0]
    if volume_index is None:
        raise InputError(path, f"4D image with {n} volumes (shape {shape})", f"pick one with --volume-index 0..{n - 1}, or volume_index= from Python")
    if not 0 <= volume_index < n:
        raise InputError(path, f"--volume-index {volume_index} out of range for {n} volumes", f"use --volume-index 0..{n - 1}")
    return int(volume_index)


def _check_finite(path: Path, data: np.ndarray) -> None:
    bad = ~np.isfinite(data)
    count = int(np.count_nonzero(bad))
    if count:
        zyx = np.argwhere(bad)[0]
        first = (int(zyx[2]), int(zyx[1]), int(zyx[0]))
        raise InputError(
            path,
            f"{count} NaN/inf voxel(s), first at voxel (i, j, k) = {first}",
            "replace them before segmenting, e.g. np.nan_to_num(img.get_fdata()) saved with nibabel",
        )
