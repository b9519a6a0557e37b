"""Read a study (a NIfTI file, a DICOM series folder or an enhanced multi-frame DICOM file) into a :class:`~pipeline.volume.volume.Volume`.

Every unusable input raises :class:`pipeline.errors.InputError` naming the file, the problem and the fix.
See :mod:`pipeline.volume.volume` for the axis convention (``data[z, y, x]``, affine on ``(x, y, z, 1)``).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.volume.sniff import (
    NIFTI_SUFFIXES,
    PAIR_SUFFIXES,
    FileKind,
    describe,
    is_analyze_header,
    is_nifti_name,
    is_pair_header,
    is_pair_name,
    pair_files,
    sniff,
)
from pipeline.volume.volume import HeaderInfo, Volume, _as_rows, affine_problem, check_memory, fill_nodata

log = logging.getLogger(__name__)

# millimetres per NIfTI spatial unit (xyzt_units), as ITK converts them; "unknown" is taken as mm, as
# nibabel, ITK and FSL all assume
MM_PER_UNIT = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}


# extensions of a DICOM file given as a study (an enhanced multi-frame object), left out of its stem
DICOM_SUFFIXES = (".dcm", ".dicom")


def study_stem(path: str | Path) -> str:
    """Output stem of a study: the file name without ``.nii``/``.nii.gz`` (or, for a NIfTI pair, without
    ``.hdr``/``.img``; for an enhanced DICOM file, without ``.dcm``/``.dicom``), or the DICOM folder name."""
    path = Path(path)
    name = path.name
    for suffix in NIFTI_SUFFIXES + PAIR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    if name.lower().endswith(DICOM_SUFFIXES) and not path.is_dir():
        return name[: name.rindex(".")]
    return name


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` is named like a NIfTI file: ``.nii``, ``.nii.gz``, or either file of a ``.hdr``/``.img`` pair."""
    return is_nifti_name(path) or is_pair_name(path)


def read_volume(path: str | Path, *, series_uid: str | None = None, volume_index: int | None = None) -> Volume:
    """Read a 3D study.

    Args:
        path: a ``.nii``/``.nii.gz`` file, either file of a NIfTI pair (``NAME.hdr`` + ``NAME.img``), a
            folder holding one DICOM series (or several, see ``series_uid``): single-frame slices or one
            enhanced multi-frame object, or the file of an enhanced multi-frame DICOM object.
        series_uid: DICOM only: the SeriesInstanceUID to read when the folder holds several series.
        volume_index: NIfTI only: which volume of a 4D image to read (0-based).

    Returns:
        The volume, ``data`` float32 ``(Z, Y, X)``, ``affine`` ``(x, y, z, 1)`` -> RAS mm.

    Raises:
        InputError: the path is missing, of an unknown kind, truncated, not 3D, empty, holds inf or only NaN,
            or (DICOM) holds several series, misses slices or is unevenly spaced.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    if path.is_dir():
        from pipeline.volume.dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid)
    if is_nifti_name(path):
        return read_nifti(path, volume_index=volume_index)
    if is_pair_name(path):
        return read_nifti(nifti_pair_header(path), volume_index=volume_index)
    if _is_multiframe_dicom(path):
        from pipeline.volume.dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid)
    raise _not_a_study(path)


def _is_multiframe_dicom(path: Path) -> bool:
    """Whether the file ``path`` is a DICOM file (preamble and ``DICM``) holding a multi-frame image
    (an enhanced CT/MR object: one file, a whole volume), read as a study by itself."""
    kind, gzipped = sniff(path)
    if kind != "dicom" or gzipped:
        return False
    from pydicom.errors import InvalidDicomError

    from pipeline.volume.dicom import _PARSE_ERRORS, read_slice
    from pipeline.volume.enhanced import is_multiframe

    try:
        return is_multiframe(read_slice(path, stop_before_pixels=True, defer_size=1024))
    except (InvalidDicomError, *_PARSE_ERRORS):  # unreadable: _not_a_study says what the file is
        return False


def nifti_pair_header(path: str | Path) -> Path:
    """The header ``NAME.hdr`` of the NIfTI pair that ``path`` (``NAME.hdr`` or ``NAME.img``) belongs to.

    Raises:
        InputError: a part of the pair is missing, the header is an Analyze 7.5 one (no orientation)
            or no header at all, or ``path`` is a single-file NIfTI named ``.hdr``/``.img``.
    """
    path = Path(path)
    header, image = pair_files(path)
    if header.is_file() and is_pair_header(header):
        if not image.is_file():
            raise InputError(header, f"NIfTI pair header without its image file {image.name}", f"put {image.name} (the voxel data) next to it")
        return header
    if path.is_file() and sniff(path)[0] in ("nifti1", "nifti2"):
        raise _not_a_study(path)  # a single-file NIfTI named .hdr/.img: the rename hint
    if not header.is_file():
        raise InputError(path, f"image file of a NIfTI pair without its header {header.name}", f"put {header.name} next to it, or give a .nii/.nii.gz file")
    if is_analyze_header(header):
        raise InputError(
            header, "an Analyze 7.5 header (no NIfTI magic): its left-right orientation is not defined",
            "convert it to NIfTI (.nii.gz) in the software that wrote it, checking left and right",
        )
    raise InputError(
        header, f"not a NIfTI pair header: {describe(*sniff(header))}", "give a NIfTI file (.nii, .nii.gz), a NIfTI .hdr/.img pair or a DICOM series folder"
    )


def _not_a_study(path: Path) -> InputError:
    """The error for a file whose name is not ``.nii``/``.nii.gz``: what its first bytes say it is."""
    kind, gzipped = sniff(path)
    if kind == "dicom" and not gzipped:
        return InputError(
            path, "a single DICOM file, not a series",
            f"pass the series folder instead: {path.parent} (a file alone is read when it holds an enhanced multi-frame volume)",
        )
    if kind in ("nifti1", "nifti2") and is_pair_header(path):
        return _renamed_pair_header(path, gzipped)
    if kind in ("nifti1", "nifti2"):
        right = f"{path.name}.nii.gz" if gzipped else f"{path.name}.nii"
        return InputError(path, f"{describe(kind, gzipped)} without the {'.nii.gz' if gzipped else '.nii'} extension", f"rename it to {right}")
    suffix = f"'{path.suffix}'" if path.suffix else "(no extension)"
    return InputError(
        path, f"unsupported file type {suffix}: {describe(kind, gzipped)}", "give a NIfTI file (.nii, .nii.gz) or a DICOM series folder"
    )


def _renamed_pair_header(path: Path, gzipped: bool) -> InputError:
    """The error for the header of a NIfTI pair named otherwise than ``NAME.hdr`` (its voxels are in ``NAME.img``)."""
    base = path.name
    for suffix in NIFTI_SUFFIXES + (".gz",) + PAIR_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return InputError(
        path, f"the{' gzip-compressed' if gzipped else ''} header of a NIfTI .hdr/.img pair, not a single-file NIfTI: the voxels are in a separate .img file",
        f"{'gunzip it, ' if gzipped else ''}rename it to {base}.hdr, keep its voxel file {base}.img next to it, and give {base}.hdr",
    )


def _check_nifti_name(path: Path) -> FileKind:
    """A ``.nii``/``.nii.gz`` name whose content disagrees: say so before nibabel fails on it. Returns the kind."""
    kind, gzipped = sniff(path)
    named_gz = path.name.lower().endswith(".nii.gz")
    if kind == "empty":
        raise InputError(path, "empty file (0 bytes)", "re-export or re-copy the file")
    if kind in ("nifti1", "nifti2") and is_nifti_name(path) and is_pair_header(path):
        raise _renamed_pair_header(path, gzipped)
    if kind in ("nifti1", "nifti2") and gzipped and not named_gz:
        raise InputError(path, "gzip-compressed, but named .nii", f"rename it to {path.name}.gz")
    if kind in ("nifti1", "nifti2") and not gzipped and named_gz:
        raise InputError(path, "not gzip-compressed, but named .nii.gz", f"rename it to {path.name[:-3]}")
    if kind == "dicom":
        raise InputError(path, f"{describe(kind, gzipped)} named like a NIfTI file", f"pass the DICOM series folder instead: {path.parent}")
    return kind


def read_nifti(path: str | Path, *, volume_index: int | None = None) -> Volume:
    """Read a NIfTI-1/2 file (see :func:`read_volume`). Scaling (scl_slope/scl_inter) is applied.

    NaN voxels are nodata (``Volume.nodata``; ``data`` holds the smallest finite value there, see
    :func:`~pipeline.volume.volume.fill_nodata`); +/-inf voxels, and a volume that is NaN only, are refused.

    The affine is converted to millimetres (``xyzt_units`` metres x1000, microns x0.001, unknown = mm,
    as ITK does); ``header`` keeps the file's own qform/sform and units for the label output.
    """
    import nibabel as nib

    path = Path(path)
    kind = _check_nifti_name(path)
    _check_voxel_size(path, kind)  # before nib.load, which would report "setting 0 dims to 1" first
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(path, f"cannot open as NIfTI ({exc})", "check that the file is a complete NIfTI file; re-export or re-copy it") from exc
    shape = tuple(int(s) for s in img.shape)
    index = _check_shape(path, shape, volume_index)
    check_memory(path, shape[:3], "the NIfTI header")  # before the voxel data is decompressed
    info = _header_info(path, img.header, np.asarray(img.affine, dtype=np.float64))
    affine = _affine_mm(path, img.affine, info.xyz_units)
    try:
        proxy = img.dataobj if index is None else img.dataobj[..., index]
        raw = np.asanyarray(proxy)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(
            path, f"file is truncated or corrupt, the voxel data cannot be read ({exc})", "re-export or re-copy the file (a .nii.gz must decompress completely)"
        ) from exc
    raw = raw.reshape(raw.shape[:3])
    data = raw.astype(np.float32, copy=False).T  # (X, Y, Z) -> (Z, Y, X); C-contiguous for NIfTI's Fortran order
    data = np.ascontiguousarray(data)
    nan = _check_finite(path, data)
    if nan is not None:
        data = np.array(data)  # may be a read-only view of nibabel's array: fill a copy
        nan = fill_nodata(data, nan)
    return Volume(data=data, affine=affine, modality="unknown", source=path, header=info, nodata=nan)


def _affine_mm(path: Path, affine: np.ndarray, units: str) -> np.ndarray:
    """nibabel's ``affine`` (header units) in millimetres, refused when it is singular."""
    scale = MM_PER_UNIT[units]
    if scale != 1.0:
        log.info("%s: spatial units are %s, affine scaled by %g to millimetres", path, units, scale)
    affine = np.diag([scale] * 3 + [1.0]) @ np.asarray(affine, dtype=np.float64)
    problem = affine_problem(affine, "the header's voxel-to-world matrix")
    if problem is not None:
        raise InputError(path, problem, "fix the header's sform/qform")
    return affine


def _check_voxel_size(path: Path, kind: FileKind) -> None:
    """Refuse a header whose affine comes from pixdim (no sform) when a spatial pixdim is 0 or not finite.

    nibabel (like niftilib) silently takes such a pixdim as 1, so volumes would be made up. The raw
    header is read here because nibabel's loaded copy already has the 0s replaced.
    """
    import nibabel as nib
    from nibabel.openers import ImageOpener

    if kind not in ("nifti1", "nifti2"):
        return  # nib.load reports what it cannot read
    header_class = nib.Nifti2Header if kind == "nifti2" else nib.Nifti1Header
    try:
        with ImageOpener(path) as f:
            raw = header_class.from_fileobj(f, check=False)
    except (OSError, EOFError, zlib.error, ValueError):
        return
    if int(raw["sform_code"]) > 0:
        return
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim != 0):
        return
    qform = int(raw["qform_code"]) > 0
    values = " ".join(f"{v:g}" for v in pixdim)
    where = "no sform, the qform takes its voxel size from pixdim" if qform else "no qform/sform"
    raise InputError(
        path,
        f"no voxel size in the header (pixdim {values}, {where}): volumes would be meaningless",
        "set the voxel size, e.g. with nibabel img.header.set_zooms",
    )


def _header_info(path: Path, header, affine: np.ndarray) -> HeaderInfo:
    """qform/sform (and their codes) and spatial units of a NIfTI header; a plain affine for other formats."""
    if not hasattr(header, "get_qform"):
        return HeaderInfo.from_affine(affine, code=0)
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    try:
        units = header.get_xyzt_units()[0] or "unknown"
    except KeyError:
        code = int(header["xyzt_units"]) & 0x07
        raise InputError(
            path, f"unknown spatial unit code {code} in the header's xyzt_units (0 unknown, 1 m, 2 mm, 3 um)",
            "set the units, e.g. nibabel img.header.set_xyzt_units('mm')",
        ) from None
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
        raise InputError(
            path, f"2D image (shape {shape}), a 3D volume is needed", "segpipe segments 3D volumes only: give one with at least 2 voxels along each axis"
        )
    extra = shape[3:]
    if not extra or int(np.prod(extra)) == 1:
        if volume_index not in (None, 0):
            raise InputError(
                path, f"--volume-index {volume_index} given but the image is 3D", "drop --volume-index, or volume_index= in Python or the segment-volumes flow"
            )
        return 0 if extra else None
    if len(extra) > 1:
        raise InputError(path, f"{len(shape)}D image (shape {shape}) not supported", "extract one 3D volume first (e.g. with fslroi)")
    n = extra[0]
    if volume_index is None:
        raise InputError(
            path, f"4D image with {n} volumes (shape {shape})",
            f"pick one with --volume-index 0..{n - 1}, or volume_index= in Python or the segment-volumes flow",
        )
    if not 0 <= volume_index < n:
        raise InputError(path, f"--volume-index {volume_index} out of range for {n} volumes", f"use --volume-index 0..{n - 1}")
    return int(volume_index)


def _check_finite(path: Path, data: np.ndarray) -> np.ndarray | None:
    """Refuse +/-inf voxels and an all-NaN volume; return the NaN voxels (bool ``(Z, Y, X)``), or None when there are none."""
    inf = np.isinf(data)
    count = int(np.count_nonzero(inf))
    if count:
        zyx = np.argwhere(inf)[0]
        first = (int(zyx[2]), int(zyx[1]), int(zyx[0]))
        raise InputError(
            path,
            f"{count} inf voxel(s), first at voxel (i, j, k) = {first}",
            "replace them before segmenting: with NaN where the voxel has no data (segpipe labels NaN voxels nodata), else with a valid value",
        )
    nan = np.isnan(data)
    if not nan.any():
        return None
    if nan.all():
        raise InputError(path, f"every voxel is NaN ({nan.size} voxels): the image holds no data", "check the export; give the volume with its image data")
    return nan
