"""Read one DICOM series into a :class:`~pipeline.volume.volume.Volume`: a folder of single-frame slices, or one
enhanced multi-frame object (Enhanced CT/MR, Legacy Converted Enhanced CT/MR; in a folder, or the file itself).

* An enhanced object's frames are its slices: each frame's ImagePositionPatient, ImageOrientationPatient,
  PixelSpacing and RescaleSlope/Intercept come from its Per-Frame or the Shared Functional Groups
  (:mod:`pipeline.volume.enhanced`), and from there on everything below applies to frames as to slices, so
  the same images give the same volume, affine and labels either way. Several images per position
  (echoes, temporal positions, b-values, ...), missing functional groups, and an enhanced object mixed with
  single-frame files of its series are refused.

* Files are grouped by SeriesInstanceUID; several series need ``series_uid`` (the error lists them).
  Only image objects with pixel data count: SEG, RTSTRUCT, SR, PR and KO objects (a SEG written by
  segpipe into the series folder, say) and files that are not DICOM are ignored. Files without the
  128-byte preamble and ``DICM`` prefix (bare datasets, as some PACS exports write) are read when
  they start like a dataset and hold an image (SOPClassUID, Rows, Columns, pixel data); see
  :func:`read_slice`. An image-storage object of the series without pixel data (a slice file cut at
  the element boundary before its PixelData) fails the series (:func:`_check_headless`).
* Slices are ordered along the slice normal ``n = row_cosines x column_cosines`` by ``n . ImagePositionPatient``;
  missing slices, duplicates and uneven spacing raise :class:`~pipeline.errors.InputError` with the position,
  and so do positions off the series line (not collinear in-plane, see :func:`_check_collinear`).
* RescaleSlope/RescaleIntercept are applied per slice (Hounsfield units for CT).
* Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000 incl. lossless, RLE) are decoded by pydicom's
  pixel handlers (pylibjpeg + pylibjpeg-openjpeg / -libjpeg).
* The affine maps ``(x, y, z, 1)`` = ``(column, row, slice, 1)`` to RAS mm:
  ``LPS = IPP_0 + x * dc * row_cosines + y * dr * column_cosines + z * step`` with ``PixelSpacing = (dr, dc)``
  and ``step = (IPP_last - IPP_0) / (n - 1)`` (which also keeps gantry tilt), then ``RAS = diag(-1, -1, 1) LPS``.
  Oblique orientations are kept exactly. A gantry-tilted (sheared) affine is written to NIfTI as the sform;
  the qform holds the series as ITK reads it, without the tilt, so that ITK-based viewers open the labels
  (see :meth:`~pipeline.volume.volume.HeaderInfo.from_affine`).
* A truncated slice is reported as such; the decoder hint is given only for a compressed syntax
  whose decoder is not installed.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.volume.sniff import is_nifti_name
from pipeline.volume.volume import DicomSource, HeaderInfo, Volume, affine_problem, check_memory, fill_nodata

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# relative tolerance on slice spacing: beyond it the series counts as unevenly spaced
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01
# How far (in-plane, mm) a slice's ImagePositionPatient may lie from the line through the series'
# positions. DICOM stores positions as decimal strings (DS, at most 16 characters) that writers round,
# often to 2-3 decimals: up to 0.005 mm per coordinate at 2 decimals, ~0.01 mm in-plane. A slice off by
# a tenth of a pixel is below what the labels or volumes can resolve, while a stray slice (a localizer,
# a shifted re-scan) is off by millimetres. So: the larger of 0.02 mm and 0.1 x the finer pixel spacing.
COLLINEAR_ATOL_MM = 0.02
COLLINEAR_PIXEL_FRACTION = 0.1


@dataclass(frozen=True)
class _Slice:
    path: Path
    ds: Any  # pydicom Dataset read without pixel data; for a frame of a multi-frame object, its view (see enhanced.frame_views)
    frame: int = 0  # 1-based frame number in a multi-frame object, 0 for a single-frame slice

    @property
    def name(self) -> str:
        """The file's name, and the frame's number for a frame of a multi-frame object."""
        return f"{self.path.name} frame {self.frame}" if self.frame else self.path.name

    @property
    def where(self) -> str:
        """``"frame 3: "`` for a frame of a multi-frame object (the file is the error's path), else ``""``."""
        return f"frame {self.frame}: " if self.frame else ""


@dataclass(frozen=True)
class _Headless:
    """An image-storage object without pixel data: its file, SOP class name and SOPInstanceUID."""

    path: Path
    sop: str
    instance_uid: str


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a declared dependency
        raise InputError("pydicom", "DICOM input needs pydicom", "pip install pydicom pylibjpeg pylibjpeg-openjpeg") from exc
    return pydicom


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read the (single, or ``series_uid``) series under ``folder`` (searched recursively), or the
    enhanced multi-frame object in the file ``folder``.

    A series is either single-frame slices or one enhanced multi-frame object (its frames are the
    slices, see :mod:`pipeline.volume.enhanced`); the two mixed in one series are refused.

    Returns:
        The volume: ``data`` float32 ``(Z, Y, X)`` (slices ordered along the normal, rows, columns) in
        rescaled units (HU for CT), ``affine`` ``(x, y, z, 1)`` -> RAS mm, ``dicom`` with the UIDs in z order,
        ``nodata`` the pixel padding (see :func:`_padding`; None without PixelPaddingValue), where
        ``data`` holds the smallest value of the other voxels (:func:`~pipeline.volume.volume.fill_nodata`).
    """
    folder = Path(folder)
    series, headless = _scan(folder)
    slices = _pick_series(folder, series, series_uid)
    _check_headless(headless.get(str(slices[0].ds.SeriesInstanceUID), []), slices)
    slices = _expand_multiframe(folder, slices)
    slices = _order(folder, slices)
    affine = _affine(slices)
    problem = affine_problem(affine, "the voxel-to-world matrix of PixelSpacing, ImageOrientationPatient and ImagePositionPatient")
    if problem is not None:
        raise InputError(folder, problem, "fix the series' geometry tags or re-export it")
    data, padding = _pixels(folder, slices)
    first = slices[0].ds
    modality = str(getattr(first, "Modality", "")).upper()
    source = DicomSource(
        study_uid=str(getattr(first, "StudyInstanceUID", "")),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        sop_class_uid=str(getattr(first, "SOPClassUID", "")),
        sop_instance_uids=tuple(str(s.ds.SOPInstanceUID) for s in slices),
        files=tuple(s.path for s in slices),
        series_description=str(getattr(first, "SeriesDescription", "")),
        frame_numbers=tuple(s.frame for s in slices) if slices[0].frame else (),
    )
    return Volume(
        data=data,
        affine=affine,
        modality=modality if modality in ("CT", "MR") else "unknown",
        source=folder,
        header=HeaderInfo.from_affine(affine, code=1),
        dicom=source,
        nodata=fill_nodata(data, padding),
    )


# Modalities of DICOM objects that are no image slices even when they carry pixel data (segpipe's own
# SEG output among them): segmentations, structure sets, reports, presentation states, key objects.
NOT_IMAGES = frozenset({"SEG", "RTSTRUCT", "SR", "PR", "KO"})
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


# First two bytes of a bare dataset (no preamble): its first tag's group, (0002,xxxx) file meta or
# (0008,xxxx) (every image has SOPClassUID (0008,0016), and elements are stored in ascending order),
# little endian, or big endian for group 8.
BARE_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
# what pydicom may raise on a file that only starts like a dataset
_PARSE_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, NotImplementedError, OverflowError, struct.error)


def read_slice(path: str | Path, *, stop_before_pixels: bool = False, defer_size: int | None = None):
    """The dataset of one DICOM file, with or without the Part 10 preamble and ``DICM`` prefix.

    A bare dataset (no preamble, no file meta) is read as pydicom guesses its encoding (implicit or
    explicit VR, byte order) and gets the matching uncompressed TransferSyntaxUID in ``file_meta``,
    so its pixel data can be decoded.

    Raises:
        pydicom.errors.InvalidDicomError: the file starts neither like a Part 10 file nor like a dataset.
        OSError, ValueError, ...: (:data:`_PARSE_ERRORS`) the file could not be parsed.
    """
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except pydicom.errors.InvalidDicomError:
        with open(path, "rb") as f:
            if f.read(2) not in BARE_DATASET_STARTS:
                raise
    ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def _scan(folder: Path) -> tuple[dict[str, list[_Slice]], dict[str, list[_Headless]]]:
    """Headers of every DICOM image object under ``folder`` (or the file ``folder``), grouped by SeriesInstanceUID,
    and the image-storage objects without pixel data, by SeriesInstanceUID
    (:func:`_check_headless` fails the series read when one of them belongs to it).

    Image objects are those with pixel data whose Modality is none of :data:`NOT_IMAGES`; the others
    (and files that are not DICOM) are logged at debug level and ignored. A file without the Part 10
    preamble counts only when it holds an image (:func:`_not_an_image`). Pixel data is not read
    (``defer_size``), only noted as present.

    Raises:
        InputError: a file that starts as a DICOM Part 10 file (preamble and ``DICM``) does not parse,
            or reads as a damaged one (:func:`_damage`): a slice cut short or garbled is never skipped
            (at either end of the series no gap shows it).
    """
    pydicom = _pydicom()
    series: dict[str, list[_Slice]] = defaultdict(list)
    headless: dict[str, list[_Headless]] = defaultdict(list)
    ignored: list[str] = []
    nifti = []
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        try:
            ds = read_slice(path, defer_size=1024)
            why = _not_an_image(ds) if ds.preamble is None else ""
        except (pydicom.errors.InvalidDicomError, *_PARSE_ERRORS) as exc:
            if _is_part10(path):  # a DICOM file garbled: skipping it left the series a slice short at either end
                raise _damaged(path, f"its header does not parse ({type(exc).__name__}: {exc})") from exc
            ds, why = None, "not a DICOM file"
        if ds is None or why:
            log.debug("%s: %s, skipped", path, why)
            if is_nifti_name(path):
                nifti.append(path)
            if ds is not None and _headless_bare_image(ds):
                headless[str(ds.SeriesInstanceUID)].append(_Headless(path, _image_storage(ds), str(ds.SOPInstanceUID)))
            continue
        why = _not_a_slice(ds)
        damage = _damage(path, ds) if why else ""
        if damage:
            raise _damaged(path, damage)
        if why:
            log.debug("%s: %s, ignored", path, why)
            ignored.append(why)
            sop = _image_storage(ds)
            if sop and "SeriesInstanceUID" in ds:
                headless[str(ds.SeriesInstanceUID)].append(_Headless(path, sop, str(ds.get("SOPInstanceUID", ""))))
            continue
        series[str(ds.SeriesInstanceUID)].append(_Slice(path, ds))
    if series:
        return series, headless
    if nifti:
        gz = {p.name.lower().endswith(".gz") for p in nifti}
        pattern = "*.nii*" if len(gz) > 1 else "*.nii.gz" if True in gz else "*.nii"
        files = "1 NIfTI file" if len(nifti) == 1 else f"{len(nifti)} NIfTI files"
        raise InputError(folder, f"this folder holds {files}, not a DICOM series", f"pass the files ({folder}/{pattern})")
    found = f" (only {len(ignored)} non-image object(s): {', '.join(sorted(set(ignored)))})" if ignored else ""
    raise InputError(folder, f"no DICOM image files found{found}", "give a folder holding the .dcm files of one series")


def _image_storage(ds) -> str:
    """The SOP class name (file meta, else SOPClassUID) when ``ds`` is an image-storage object without
    pixel data that is not one of :data:`NOT_IMAGES`, else ``""``."""
    if any(keyword in ds for keyword in PIXEL_KEYWORDS) or str(getattr(ds, "Modality", "")).upper() in NOT_IMAGES:
        return ""
    sop = _storage_class(ds)
    if not sop and "SOPClassUID" in ds:
        sop = str(getattr(ds.SOPClassUID, "name", "") or "")
    return sop if "Image Storage" in sop else ""


def _headless_bare_image(ds) -> bool:
    """Whether a bare dataset (no preamble) that is no image only for lacking pixel data has every other
    attribute of one (an image-storage SOPClassUID, the instance and series UIDs, Rows, Columns): a bare
    slice cut before its PixelData. Random bytes never parse into these."""
    return all(keyword in ds for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns")) and bool(_image_storage(ds))


def _check_headless(objects: list[_Headless], slices: list[_Slice]) -> None:
    """Fail the series when an image-storage object of it has no pixel data and its pixels are in no
    other file of the series (a header-only copy of a slice that is there, SOPInstanceUID and all, loses nothing).

    A slice file cut exactly at an element boundary before its PixelData parses as a complete header
    (its last element ends where the file ends, so :func:`_ends_inside_an_element` cannot tell), and was
    ignored as a header-only object: a slice missing at either end of the series leaves no gap, and
    the study ran one slice short without a word. An image of the series without its pixels is damaged.

    Raises:
        InputError: naming the first such file.
    """
    present = {str(s.ds.SOPInstanceUID) for s in slices}
    missing = [o for o in objects if o.instance_uid not in present]
    if missing:
        more = f" ({len(missing) - 1} more file(s) of the series like it)" if len(missing) > 1 else ""
        raise _damaged(missing[0].path, f"a {missing[0].sop} file of this series without pixel data: it was cut short before its pixel data{more}")


def _damaged(path: Path, problem: str) -> InputError:
    return InputError(
        path, f"damaged DICOM file: {problem}",
        "the file is incomplete or corrupt (a transfer stopped early?); re-transfer or re-export the series, or move the file out of the folder",
    )


def _storage_class(ds) -> str:
    """The name of the SOP class the file meta says the file holds (e.g. ``CT Image Storage``), or ``""``."""
    uid = getattr(ds, "file_meta", None) and ds.file_meta.get("MediaStorageSOPClassUID")
    return str(getattr(uid, "name", "") or "") if uid else ""


def _damage(path: Path, ds) -> str:
    """Why ``ds`` (read from ``path``), which is no image slice (:func:`_not_a_slice`), is a damaged
    file rather than a non-image object, or ``""``. pydicom reads a file cut short or garbled without a
    word, as a dataset that ends where the damage begins. Damaged: a Part 10 file (preamble and
    ``DICM``) whose file meta names no SOP class; a file whose file meta (its first bytes) names an
    image storage class but whose dataset lacks the series or instance UID every image has, or lacks
    pixel data and ends inside an element. A complete header without pixels (cut exactly at an element
    boundary, or a header-only object) is ignored here; :func:`_check_headless` fails the series it belongs to."""
    sop = _storage_class(ds)
    if not sop:
        return "a DICOM file (preamble and DICM) whose file meta does not parse" if _is_part10(path) else ""
    if "Image Storage" not in sop or str(getattr(ds, "Modality", "")).upper() in NOT_IMAGES:
        return ""
    if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        return f"a {sop} file with no series or instance UID: it was cut short"
    if _ends_inside_an_element(path, ds):
        return f"a {sop} file that ends inside an element, before its pixel data: it was cut short"
    return ""


def _ends_inside_an_element(path: Path, ds) -> bool:
    """Whether the file's last element, as read, does not end where the file ends (a cut inside a
    value or a tag); False where that cannot be told (a sequence of undefined length, a converted element)."""
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(max(tags))
    start, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if start is None or length is None or length == 0xFFFFFFFF:
        return False
    try:
        return start + length != path.stat().st_size
    except OSError:
        return False


def _is_part10(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM Part 10 file does: a 128-byte preamble, then ``DICM``."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _not_a_slice(ds) -> str:
    """Why ``ds`` is no image slice of a series (empty when it is one)."""
    modality = str(getattr(ds, "Modality", "")).upper()
    if modality in NOT_IMAGES:
        return f"{modality} object"
    if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        return "no series or instance UID (DICOMDIR or another non-image object)"
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        return f"{modality or 'DICOM'} object without pixel data"
    return ""


def _not_an_image(ds) -> str:
    """Why a file read without the Part 10 preamble is not taken as a DICOM image (empty when it is one):
    random bytes can parse as a few elements, an image has its SOP class, size and pixel data."""
    if not all(keyword in ds for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns")):
        return "no DICOM preamble and no image attributes: not a DICOM file"
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        return "no DICOM preamble and no pixel data: not a DICOM image"
    uid = str(ds.SOPClassUID)
    if not (uid[:1].isdigit() and set(uid) <= set("0123456789.") and len(uid) <= 64):
        return f"no DICOM preamble and SOPClassUID {uid[:20]!r} is not a UID: not a DICOM file"
    return ""


def _frames(slc: _Slice) -> int:
    return int(getattr(slc.ds, "NumberOfFrames", 1) or 1)


def _count(slices: list[_Slice]) -> str:
    """``"30 slices"``, or ``"1 file, 120 frames"`` when the series holds multi-frame objects."""
    frames = sum(_frames(s) for s in slices)
    if frames == len(slices):
        return f"{len(slices)} slices"
    return f"{len(slices)} file{'s' if len(slices) > 1 else ''}, {frames} frames"


def _pick_series(folder: Path, series: dict[str, list[_Slice]], series_uid: str | None) -> list[_Slice]:
    def describe(uid: str) -> str:
        ds = series[uid][0].ds
        desc = str(getattr(ds, "SeriesDescription", "")) or "no description"
        return f"{uid} ({getattr(ds, 'Modality', '?')}, '{desc}', {_count(series[uid])})"

    listing = "; ".join(describe(uid) for uid in sorted(series))
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(
                folder, f"series {series_uid} not found; the folder holds: {listing}", "pass one of these SeriesInstanceUIDs as series_uid (--series-uid)"
            )
        return series[series_uid]
    if len(series) > 1:
        raise InputError(
            folder, f"{len(series)} series in one folder: {listing}", "pass series_uid=<SeriesInstanceUID> (--series-uid) or give a folder per series"
        )
    return next(iter(series.values()))


def _vector(slc: _Slice, keyword: str, size: int) -> np.ndarray:
    value = getattr(slc.ds, keyword, None)
    try:
        if value is not None and len(value) == size:
            return np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        pass
    raise InputError(slc.path, f"{slc.where}missing or malformed {keyword}", "the series must carry patient geometry; convert it to NIfTI with dcm2niix")


def _expand_multiframe(folder: Path, slices: list[_Slice]) -> list[_Slice]:
    """The series' slices, with an enhanced multi-frame object replaced by its frames (one :class:`_Slice` each,
    ``ds`` the frame's view, see :func:`~pipeline.volume.enhanced.frame_views`).

    Raises:
        InputError: the series mixes a multi-frame object with single-frame files or holds several
            multi-frame objects, the object lacks functional groups, or it holds several images per
            position (:func:`~pipeline.volume.enhanced.check_one_image_per_position`).
    """
    from pipeline.volume.enhanced import check_one_image_per_position, frame_views, is_multiframe

    multi = [s for s in slices if is_multiframe(s.ds)]
    if not multi:
        return slices
    uid = str(slices[0].ds.SeriesInstanceUID)
    if len(multi) < len(slices):
        single = [s for s in slices if not is_multiframe(s.ds)]
        raise InputError(
            multi[0].path,
            f"series {uid} mixes a multi-frame (enhanced) object ({multi[0].path.name}, {_frames(multi[0])} frames) with "
            f"{len(single)} single-frame file(s) ({', '.join(s.path.name for s in single[:3])}{', ...' if len(single) > 3 else ''})",
            "keep one form of the series in the folder: move the single-frame files (or the enhanced object) out, or give the enhanced file itself",
        )
    if len(multi) > 1:  # highdicom's SEG, too, references a single multi-frame source
        names = ", ".join(s.path.name for s in multi[:3]) + (", ..." if len(multi) > 3 else "")
        if len({str(s.ds.get("ConcatenationUID", "")) for s in multi} - {""}) == 1:
            raise InputError(
                folder, f"series {uid} is one enhanced object split into {len(multi)} files (a concatenation: {names}), which segpipe does not join",
                "convert the series to NIfTI with dcm2niix (it joins them) and segment that, or re-export it unsplit",
            )
        raise InputError(
            folder, f"series {uid} holds {len(multi)} multi-frame (enhanced) objects ({names})",
            "segpipe reads one enhanced object per series: give each file by itself (segpipe volume FILE.dcm) or a folder per object",
        )
    obj = multi[0]
    views = frame_views(obj.path, obj.ds)  # the header as scanned: its pixel data deferred, the functional groups in full
    check_one_image_per_position(obj.path, obj.ds, views)
    return [_Slice(obj.path, view, frame=number) for number, view in enumerate(views, start=1)]


def _order(folder: Path, slices: list[_Slice]) -> list[_Slice]:
    """Sort along the slice normal; check geometry consistency, duplicates, gaps and spacing."""
    first = slices[0]
    iop = _vector(first, "ImageOrientationPatient", 6)
    spacing = _vector(first, "PixelSpacing", 2)
    shape = (int(first.ds.Rows), int(first.ds.Columns))
    for slc in slices[1:]:
        if not np.allclose(_vector(slc, "ImageOrientationPatient", 6), iop, atol=1e-4):
            raise InputError(
                slc.path, f"{slc.where}ImageOrientationPatient differs from the other slices of the series",
                "segment one orientation per series (split the series)",
            )
        if (int(slc.ds.Rows), int(slc.ds.Columns)) != shape or not np.allclose(_vector(slc, "PixelSpacing", 2), spacing, atol=1e-4):
            raise InputError(
                slc.path, f"{slc.where}slice size or PixelSpacing differs from the other slices", "the series must be one regular 3D grid; re-export it"
            )
    if len(slices) < 2:
        raise InputError(folder, "2D image: the series holds a single slice", "segpipe segments 3D series only: give a series of at least 2 slices")
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 0.5 or min(spacing) <= 0:
        raise InputError(
            first.path, f"{first.where}degenerate geometry: ImageOrientationPatient {iop.tolist()} and PixelSpacing {spacing.tolist()} span no plane",
            "the row and column directions must be perpendicular unit vectors and the spacing positive; fix the tags or re-export the series",
        )
    pos = np.array([normal @ _vector(s, "ImagePositionPatient", 3) for s in slices])
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    pos = pos[order]
    _check_spacing(folder, slices, pos)
    _check_collinear(folder, slices, pos, iop, spacing)
    return slices


def _check_spacing(folder: Path, slices: list[_Slice], pos: np.ndarray) -> None:
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < SPACING_ATOL_MM)
    if dup.size:
        i = int(dup[0])
        raise InputError(
            folder,
            f"two slices at the same position {pos[i]:.3f} mm along the normal: {slices[i].name} and {slices[i + 1].name}",
            "the folder mixes acquisitions (several echoes/phases?); keep one slice per position",
        )
    step = float(np.median(gaps))
    tol = max(SPACING_ATOL_MM, SPACING_RTOL * step)
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if not bad.size:
        return
    i = int(bad[0])
    where = f"between slice {i} ({slices[i].name}, {pos[i]:.2f} mm) and slice {i + 1} ({slices[i + 1].name}, {pos[i + 1]:.2f} mm)"
    ratio = gaps[i] / step
    if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
        missing = int(round(ratio)) - 1
        raise InputError(
            folder,
            f"{missing} missing slice(s) {where}: gap {gaps[i]:.2f} mm where the spacing is {step:.2f} mm",
            "re-export or re-transfer the complete series",
        )
    raise InputError(
        folder,
        f"uneven slice spacing {where}: {gaps[i]:.2f} mm where the median spacing is {step:.2f} mm",
        "resample the series to a regular grid first (e.g. dcm2niix then a resampler) or re-export it",
    )


def _check_collinear(folder: Path, slices: list[_Slice], pos: np.ndarray, iop: np.ndarray, spacing: np.ndarray) -> None:
    """Refuse slices whose ImagePositionPatient lies off the line of the series' positions.

    The affine places slice ``z`` at ``IPP_0 + z * step``, so every position must lie on one straight
    line: parallel to the normal for an ordinary series, leaning for a gantry-tilted one. Only the
    in-plane part (along the row and column cosines, mm) is checked here, as a linear function of the
    position ``pos`` along the normal (sorted, mm; :func:`_check_spacing` checks that part). The line is
    fitted with medians (slope of consecutive positions, then offset), so one stray slice, the first or
    the last included, is the one named, not its neighbours.
    """
    if len(slices) < 3:
        return  # two positions always lie on a line
    ipp = np.array([_vector(s, "ImagePositionPatient", 3) for s in slices])
    inplane = ipp @ np.stack([iop[:3], iop[3:]], axis=1)  # (n, 2): mm along the row, column cosines
    slope = np.median(np.diff(inplane, axis=0) / np.diff(pos)[:, None], axis=0)
    intercept = np.median(inplane - pos[:, None] * slope, axis=0)
    offset = np.linalg.norm(inplane - intercept - pos[:, None] * slope, axis=1)
    tol = max(COLLINEAR_ATOL_MM, COLLINEAR_PIXEL_FRACTION * float(min(spacing)))
    bad = np.flatnonzero(offset > tol)
    if not bad.size:
        return
    named = ", ".join(f"{slices[i].name} (slice {i}) by {offset[i]:.2f} mm" for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    raise InputError(
        folder,
        f"slice positions not collinear: {bad.size} of {len(slices)} slices {'lies' if bad.size == 1 else 'lie'} off the line "
        f"through the others' ImagePositionPatient, in-plane: {named}{more} (tolerance {tol:.2f} mm)",
        "remove the stray slice(s) from the folder or re-export the series; a localizer or another acquisition may be mixed in",
    )


def _pixels(folder: Path, slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """Decode every slice and apply RescaleSlope/Intercept: float32 ``(Z, rows, columns)``, and the
    pixel padding mask (bool, same shape; :func:`_padding`, taken on the stored values of each slice).

    Raises:
        InputError: a colour slice, an undecodable one, or a series that is padding only.
    """
    first = slices[0].ds
    check_memory(folder, (len(slices), int(first.Rows), int(first.Columns)), "the series (slices x Rows x Columns)")
    data = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.float32)
    padding = np.zeros(data.shape, dtype=bool)
    if slices[0].frame:  # the frames of one enhanced object
        _frames_into(slices, data, padding)
    else:
        for z, slc in enumerate(slices):
            ds = read_slice(slc.path)
            _check_greyscale(slc.path, ds)
            _store(_decode(slc.path, ds), ds, slc, data[z], padding[z])
    if padding.all():
        raise InputError(
            folder, f"every voxel is pixel padding (PixelPaddingValue {first.get('PixelPaddingValue')}): the series holds no image data",
            "check the export; give the series with its image data",
        )
    return data, padding


def _frames_into(slices: list[_Slice], data: np.ndarray, padding: np.ndarray) -> None:
    """Fill ``data``/``padding`` (z order) from the one multi-frame object the ``slices`` are frames of,
    decoding its frames one at a time in stored order (frame ``slices[z].frame`` goes to ``z``)."""
    path = slices[0].path
    ds = read_slice(path)
    _check_greyscale(path, ds)
    z_of = {slc.frame: z for z, slc in enumerate(slices)}
    filled = 0
    for number, pixels in enumerate(_decode_frames(path, ds), start=1):
        z = z_of.get(number)
        if z is not None:
            _store(pixels, ds, slices[z], data[z], padding[z])
            filled += 1
    if filled < len(slices):
        raise InputError(path, f"pixel data for {filled} of the {len(slices)} frames the header lists", "re-transfer or re-export the series")


def _check_greyscale(path: Path, ds) -> None:
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise InputError(path, f"{ds.SamplesPerPixel} samples per pixel (colour image)", "give a greyscale CT/MR series")


def _store(pixels: np.ndarray, ds, slc: _Slice, out: np.ndarray, padding: np.ndarray) -> None:
    """Put one slice's stored ``pixels`` ``(rows, columns)`` into ``out`` rescaled, and its padding into ``padding``.

    ``ds``: the file's dataset (pixel padding tags); the rescale is the slice's own RescaleSlope/Intercept,
    for a frame of a multi-frame object the one of its functional groups (its view ``slc.ds``).
    """
    _padding(ds, pixels, out=padding)
    slope = float(getattr(slc.ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(slc.ds, "RescaleIntercept", 0.0) or 0.0)
    out[...] = pixels.astype(np.float64) * slope + intercept


def _padding(ds, pixels: np.ndarray, *, out: np.ndarray) -> None:
    """Set ``out`` True where the stored (not rescaled) ``pixels`` of ``ds`` are pixel padding.

    DICOM PS3.3 C.7.5.1.1.2: a pixel is padding when its stored value equals PixelPaddingValue, or,
    when PixelPaddingRangeLimit is present, lies between the two values inclusive (in either order).
    Without PixelPaddingValue nothing is padding. The tags have the VR of the pixels (US or SS after
    PixelRepresentation); a value written with the other one (-2000 on unsigned pixels, or 63536 on
    signed ones, which some exporters do) is read as the same bit pattern of BitsAllocated bits.
    """
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue is None:
        return
    bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1

    def stored(value) -> int:
        value = int(value)
        if not signed and value < 0:
            return value + (1 << bits)
        if signed and value >= 1 << (bits - 1):
            return value - (1 << bits)
        return value

    lo = hi = stored(ds.PixelPaddingValue)
    if "PixelPaddingRangeLimit" in ds and ds.PixelPaddingRangeLimit is not None:
        lo, hi = sorted((lo, stored(ds.PixelPaddingRangeLimit)))
    values = np.asarray(pixels)
    if lo == hi:
        np.equal(values, lo, out=out)
    else:
        np.logical_and(values >= lo, values <= hi, out=out)


_DECODE_ERRORS = (RuntimeError, NotImplementedError, ValueError, AttributeError, TypeError)


def _decode(path: Path, ds) -> np.ndarray:
    """``ds.pixel_array`` (``(rows, columns)``), or an InputError telling a truncated file from a missing decoder."""
    _check_length(path, ds)
    try:
        return ds.pixel_array
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, ds, exc) from exc


def _decode_frames(path: Path, ds) -> Iterator[np.ndarray]:
    """The stored pixels ``(rows, columns)`` of each frame of a multi-frame ``ds``, in stored order, decoded
    one at a time (no ``(frames, rows, columns)`` copy of the whole object); errors as :func:`_decode`."""
    from pydicom.pixels import iter_pixels

    _check_length(path, ds)
    try:
        yield from iter_pixels(ds)
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, ds, exc) from exc


def _check_length(path: Path, ds) -> None:
    """Refuse uncompressed pixel data shorter than Rows x Columns x frames x samples x bits say."""
    from pydicom.pixels.utils import get_expected_length

    syntax = ds.file_meta.get("TransferSyntaxUID")
    if (syntax is None or not syntax.is_compressed) and "PixelData" in ds:
        expected, actual = int(get_expected_length(ds, unit="bytes")), len(ds.PixelData)
        if actual < expected:
            raise InputError(path, f"pixel data truncated ({actual} of {expected} bytes): the file is incomplete", "re-transfer or re-export the series")


def _decode_error(path: Path, ds, exc: Exception) -> InputError:
    """The error for pixel data that does not decode: a missing decoder (the install hint) or damaged data."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = getattr(syntax, "name", str(syntax or "unknown"))
    reason = " ".join(str(exc).split())  # pydicom lists each plugin's failure on its own line
    if syntax is not None and syntax.is_compressed:
        try:
            missing = not get_decoder(syntax).is_available
        except NotImplementedError:  # no decoder exists for this syntax at all
            missing = True
        if missing:
            return InputError(
                path, f"cannot decode pixel data (transfer syntax {name}): {reason}",
                "install the decoders: pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg",
            )
    return InputError(
        path, f"cannot decode pixel data (transfer syntax {name}): {reason}", "the file is damaged or incomplete; re-transfer or re-export the series"
    )


def _affine(slices: list[_Slice]) -> np.ndarray:
    first = slices[0]
    iop = _vector(first, "ImageOrientationPatient", 6)
    row_spacing, col_spacing = _vector(first, "PixelSpacing", 2)
    ipp0 = _vector(first, "ImagePositionPatient", 3)
    ipp1 = _vector(slices[-1], "ImagePositionPatient", 3)
    step = (ipp1 - ipp0) / (len(slices) - 1)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # x = column index, along the row direction cosines
    lps[:3, 1] = iop[3:] * row_spacing  # y = row index, along the column direction cosines
    lps[:3, 2] = step
    lps[:3, 3] = ipp0
    return LPS_TO_RAS @ lps
