"""The :class:`Volume` value object and the grid maths every other volume module shares.

Axis convention (used throughout ``pipeline/volume``):

* ``Volume.data`` is indexed ``data[z, y, x]``, shape ``(Z, Y, X)``. This is the on-disk memory order of
  NIfTI (whose first index ``i`` varies fastest) read back to front, and the order of a DICOM series
  stacked slice by slice (``pixel_array`` is ``(rows, columns)``), so both readers return C-contiguous
  arrays without a copy. It is also the ``(Z, Y, X)`` order of the engine and of ``spec.window`` /
  ``spec.spacing``.
* ``Volume.affine`` follows the nibabel convention: it maps the voxel index ``(i, j, k, 1)`` =
  ``(x, y, z, 1)`` (note: reversed with respect to ``data``) to RAS+ world coordinates in millimetres.
  So the world position of ``data[z, y, x]`` is ``affine @ [x, y, z, 1]``.
* Orientation codes (``"RAS"``, ``"LPS"``, ...) are nibabel axis codes of ``(x, y, z)``: ``"LAS"`` means
  ``x`` grows to the Left, ``y`` to the Anterior, ``z`` to the Superior.
* ``Volume.nodata`` marks voxels without image data (DICOM pixel padding, NaN in NIfTI), same
  ``(Z, Y, X)`` order as ``data``; they become the spec's ``nodata`` label and count in no class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Modality = Literal["CT", "MR", "unknown"]


@dataclass(frozen=True)
class HeaderInfo:
    """NIfTI geometry header fields, copied unchanged onto the label output.

    ``qform``/``sform`` are 4x4 ``(x, y, z, 1) -> world mm`` matrices; the codes are the NIfTI
    ``qform_code``/``sform_code`` (0 unknown, 1 scanner, 2 aligned, 3 Talairach, 4 MNI).
    """

    qform: tuple[tuple[float, ...], ...]
    qform_code: int
    sform: tuple[tuple[float, ...], ...]
    sform_code: int
    xyz_units: str = "mm"

    @staticmethod
    def from_affine(affine: np.ndarray, code: int = 1) -> HeaderInfo:
        """Header for a volume without a NIfTI header (DICOM): qform = sform = ``affine``, both ``code``.

        A sheared ``affine`` (a gantry-tilted series, see :func:`is_sheared`) keeps the exact
        ``affine`` as the sform, which nibabel, FSL and segpipe read, and gets :func:`slice_normal_affine`
        as the qform (same ``code``). NIfTI's qform holds a rotation and voxel sizes only, and ITK
        (3D Slicer, ITK-SNAP, SimpleITK) refuses a non-orthogonal sform: with ``qform_code`` 0 it could
        not open the labels at all ("ITK only supports orthonormal direction cosines"); with this qform
        it places them exactly where it places the DICOM series itself, which it reads without the tilt.
        """
        rows = _as_rows(affine)
        qform = _as_rows(slice_normal_affine(affine)) if is_sheared(affine) else rows
        return HeaderInfo(qform=qform, qform_code=code, sform=rows, sform_code=code)


@dataclass(frozen=True)
class DicomSource:
    """What a DICOM SEG needs to reference its source series. Tuples are in ``Volume.data`` z order.

    For an enhanced multi-frame source every z comes from the same object: ``sop_instance_uids`` and
    ``files`` repeat its UID and file, and ``frame_numbers`` holds the (1-based) frame of each z; it
    is empty for a series of single-frame slices.
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]
    series_description: str = ""
    frame_numbers: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image on its native grid.

    Attributes:
        data: float32 intensities, shape ``(Z, Y, X)``, read-only (HU for CT from DICOM or a HU NIfTI).
        affine: float64 4x4, voxel ``(x, y, z, 1)`` -> RAS+ millimetres (nibabel convention).
        modality: ``"CT"``, ``"MR"`` or ``"unknown"`` (NIfTI carries no modality).
        source: the file or DICOM folder read.
        header: NIfTI qform/sform and their codes, to be copied onto outputs.
        dicom: the source series' UIDs (DICOM input only), for DICOM SEG.
        nodata: bool ``(Z, Y, X)``, read-only, True where the input has no image data (DICOM voxels
            whose stored value is the PixelPaddingValue or in its PixelPaddingRangeLimit range; NaN
            voxels of a NIfTI file); None when no voxel is. ``data`` holds :func:`fill_nodata`'s
            value there (what the model sees); these voxels get the spec's ``nodata`` label.
    """

    data: np.ndarray
    affine: np.ndarray
    modality: Modality
    source: Path
    header: HeaderInfo
    dicom: DicomSource | None = None
    nodata: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.dtype != np.float32:
            raise ValueError(f"Volume.data must be float32 (Z, Y, X), got {self.data.dtype} {self.data.shape}")
        if self.nodata is not None:
            if self.nodata.dtype != np.bool_ or self.nodata.shape != self.data.shape:
                raise ValueError(f"Volume.nodata must be bool {self.data.shape}, got {self.nodata.dtype} {self.nodata.shape}")
            if self.nodata.flags.writeable:
                mask = self.nodata.view()
                mask.flags.writeable = False
                object.__setattr__(self, "nodata", mask)
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {affine.shape}")
        affine.flags.writeable = False
        object.__setattr__(self, "affine", affine)
        if self.data.flags.writeable:
            view = self.data.view()
            view.flags.writeable = False
            object.__setattr__(self, "data", view)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` voxels."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(z, y, x)`` in millimetres."""
        return spacing_zyx(self.affine)

    @property
    def orientation(self) -> str:
        """nibabel axis codes of ``(x, y, z)``, e.g. ``"RAS"``."""
        return orientation_code(self.affine)

    @property
    def voxel_volume_mm3(self) -> float:
        """``|det(affine[:3, :3])|`` in mm^3 (exact for oblique and sheared grids)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def nodata_count(self) -> int:
        """Number of nodata voxels (0 when ``nodata`` is None)."""
        return 0 if self.nodata is None else int(np.count_nonzero(self.nodata))


def fill_nodata(data: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Give the ``mask``ed voxels of ``data`` (in place) the smallest value of the others; return the mask, or None when empty.

    Why the minimum: it is what a scan shows where there is nothing (air at about -1000 HU on CT,
    the dark background of MR), so a convolution reaching across the edge of the nodata region sees
    a plausible border rather than an invented structure (0 is water on CT, and NaN would spread
    through every window and resampling that touches it); and it lies inside the image's own value
    range, so intensity windows and one-pass statistics see nothing new. The labels there are
    replaced by nodata anyway.

    Args:
        data: float ``(Z, Y, X)``, writable; its values under ``mask`` are ignored (NaN allowed).
        mask: bool ``(Z, Y, X)``, True at nodata voxels; not all True (the caller refuses that).
    """
    if not mask.any():
        return None
    data[mask] = np.min(data, where=~mask, initial=np.inf)
    return mask


BYTES_PER_VOXEL = 16
"""Peak memory of segmenting a study, per voxel, roughly: the stored values, float32 intensities, the
model-grid copy, the nodata mask and the labels (a 512 x 512 x 300 CT: about 1.3 GB)."""


def check_memory(path: str | Path, shape: tuple[int, ...], what: str) -> None:
    """Refuse, from the header alone, a study that cannot fit in this machine's available memory.

    A 9 MB ``.nii.gz`` declaring 2048 x 1024 x 1024 voxels was decompressed for 32 s and then failed
    with an unexplained MemoryError; DICOM slices declaring Rows = Columns = 60000 asked for 40 GiB
    before the pixel data was looked at.

    Args:
        path: the file or folder, for the message.
        shape: the voxel counts the header declares.
        what: how the message names the header (e.g. ``"the NIfTI header"``).

    Raises:
        InputError: ``prod(shape) * BYTES_PER_VOXEL`` exceeds the available memory (psutil).
    """
    import psutil

    from pipeline.errors import InputError

    need = float(np.prod(np.asarray(shape, dtype=np.float64))) * BYTES_PER_VOXEL
    available = psutil.virtual_memory().available
    if need > available:
        dims = " x ".join(str(int(s)) for s in shape)
        raise InputError(
            path,
            f"{what} declares {dims} voxels, which need about {need / 2**30:.1f} GiB of memory to segment; {available / 2**30:.1f} GiB is available",
            "check the file (a header that declares far more voxels than the file holds is corrupt), or segment it on a machine with more memory",
        )


def spacing_zyx(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` in mm: lengths of the affine's columns ``k, j, i``."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[2]), float(norms[1]), float(norms[0]))


# |cosine| between two voxel axes above which an affine counts as sheared (1e-4 rad = 0.006 degrees:
# 0.05 mm over 500 mm); the rounding of DICOM's decimal strings usually stays far below it.
SHEAR_TOLERANCE = 1e-4


def is_sheared(affine: np.ndarray, *, tolerance: float = SHEAR_TOLERANCE) -> bool:
    """Whether the voxel axes (columns of ``affine[:3, :3]``) are not mutually orthogonal.

    An affine without shear is a rotation (or reflection) times voxel sizes, which NIfTI's qform can
    hold; a sheared one (gantry tilt) only fits the sform. Degenerate affines count as not sheared
    (see :func:`affine_problem`).
    """
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(norms == 0):
        return False
    unit = matrix / norms
    cosines = unit.T @ unit - np.eye(3)
    return bool(np.max(np.abs(cosines)) > tolerance)


def slice_normal_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` with its slice axis along the normal of the slices: how ITK reads a tilted DICOM series.

    The ``x`` and ``y`` columns (row and column directions times pixel spacing) and the origin stay;
    the ``z`` column becomes the unit normal ``x cross y`` (turned to the side of the slice step)
    times the length of the step. For an unsheared ``affine`` this is ``affine`` itself; for a
    gantry-tilted one it is what ITK's ``ImageSeriesReader`` gives for the series (origin at the first
    slice, direction from ImageOrientationPatient, spacing the distance between slice positions).

    Args:
        affine: 4x4, voxel ``(x, y, z, 1)`` -> RAS mm.
    """
    affine = np.array(affine, dtype=np.float64)
    x, y, z = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    normal = np.cross(x, y)
    normal /= np.linalg.norm(normal)
    if normal @ z < 0:
        normal = -normal
    affine[:3, 2] = normal * np.linalg.norm(z)
    return affine


def affine_problem(affine: np.ndarray, what: str = "the voxel-to-world matrix") -> str | None:
    """What makes ``affine`` unusable as a voxel -> world mapping (a singular or non-finite matrix), or None.

    Args:
        affine: 4x4, voxel ``(x, y, z, 1)`` -> world.
        what: how the message names the matrix (e.g. ``"the header's voxel-to-world matrix"``).

    Axes are numbered 1, 2, 3 for ``i, j, k`` = ``x, y, z`` (nibabel's voxel index, columns of the affine).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        return f"non-finite (NaN or inf) values in {what}"
    matrix = affine[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    zero = [i + 1 for i in range(3) if norms[i] <= 1e-12 * max(float(norms.max()), 1e-300)]
    if len(zero) == 1:
        return f"degenerate affine: axis {zero[0]} has zero length, {what} is singular"
    if zero:
        return f"degenerate affine: axes {' and '.join(str(a) for a in zero)} have zero length, {what} is singular"
    if abs(np.linalg.det(matrix)) <= 1e-9 * float(np.prod(norms)):
        return f"degenerate affine: the voxel axes lie in one plane, {what} is singular"
    return None


def orientation_code(affine: np.ndarray) -> str:
    """nibabel axis codes (``"RAS"``, ``"LPS"``, ...) of the ``(x, y, z)`` axes; nearest axes when oblique."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def index_to_world(affine: np.ndarray, zyx: np.ndarray) -> np.ndarray:
    """World RAS mm of voxel indices given as ``(..., 3)`` rows of ``(z, y, x)`` (fractional allowed)."""
    zyx = np.asarray(zyx, dtype=np.float64)
    xyz = zyx[..., ::-1]
    affine = np.asarray(affine, dtype=np.float64)
    return xyz @ affine[:3, :3].T + affine[:3, 3]


def _as_rows(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(matrix, dtype=np.float64))
