"""Enhanced (multi-frame) DICOM objects as per-frame views, so that one reader orders and checks every series.

An enhanced object (Enhanced CT/MR Image Storage, Legacy Converted Enhanced CT/MR, ...) holds all its
frames in one file; each frame's geometry and rescale sit in the Per-Frame Functional Groups, or, when
the same for every frame, in the Shared Functional Groups (DICOM PS3.3 C.7.6.16):

* PlanePositionSequence > ImagePositionPatient (per frame, normally),
* PlaneOrientationSequence > ImageOrientationPatient,
* PixelMeasuresSequence > PixelSpacing,
* PixelValueTransformationSequence > RescaleSlope, RescaleIntercept (absent on most MR: slope 1, intercept 0).

:func:`frame_views` turns the object into one small dataset per frame carrying these as the plain
single-frame attributes (``ImagePositionPatient``, ...) plus the object's UIDs, so that
:mod:`pipeline.volume.dicom` sorts the frames along the slice normal, checks spacing, duplicates and
collinearity, and builds the affine with exactly the code (and the numbers) it uses for a series of
single-frame slices: the same images give the same volume and the same labels either way.

Why not ``highdicom.Image.get_volume()`` (highdicom 0.28): its volume stacks the frames along either
sense of the normal (descending for a legacy-converted series: a different, flipped grid, and labels
that would differ from the single-frame reading of the same images), it refuses a gantry-tilted stack
(positions not along the normal, which segpipe keeps for single-frame series), its refusals are bare
``RuntimeError`` s that name neither frame nor dimension, and it returns rescaled values only (pixel
padding is defined on the stored ones). highdicom is used to write the DICOM SEG and, in the tests, to
build enhanced objects and to cross-check this reader.

Several images per position (echoes, temporal positions, b-values, cardiac phases, stacks, magnitude
and phase) are refused by :func:`check_one_image_per_position`, naming the dimension and its values.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

# Top-level attributes a frame view keeps (what the series reader and the SEG writer read).
KEPT = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "SeriesDescription", "Rows", "Columns", "SamplesPerPixel", "PixelPaddingValue",
)
# Functional group macros (sequence, attributes) that hold a frame's geometry and rescale.
GEOMETRY = (
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
)
RESCALE = ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept"))

RE_EXPORT = (
    "re-export the series from the scanner or PACS as enhanced or as single-frame slices, or convert it to NIfTI with dcm2niix and segment that"
)
SPLIT = (
    "segpipe segments one 3D volume per study: split the object first, e.g. with dcm2niix (one NIfTI per echo; "
    "temporal positions, b-values and phases as a 4D NIfTI, one volume of which --volume-index picks), and segment that"
)


def is_multiframe(ds: Any) -> bool:
    """Whether ``ds`` holds more than one frame (NumberOfFrames > 1)."""
    try:
        return int(getattr(ds, "NumberOfFrames", 1) or 1) > 1
    except (TypeError, ValueError):
        return False


def frame_views(path: Path, ds: Any) -> list[Any]:
    """One pydicom Dataset per frame of the multi-frame object ``ds`` (read from ``path``), in stored order.

    Each view holds the object's :data:`KEPT` attributes and the frame's ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing, RescaleSlope and RescaleIntercept, taken from its per-frame
    functional groups, else from the shared ones (RescaleSlope/Intercept: else the top level, else 1 and 0).

    Raises:
        InputError: the object has no functional groups (a classic multi-frame object: frame positions
            not recorded), a per-frame sequence whose length is not NumberOfFrames, or a frame without
            one of the geometry attributes in either group.
    """
    from pydicom.dataset import Dataset

    frames = int(ds.NumberOfFrames)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None and shared_seq is None:
        raise InputError(
            path, f"multi-frame DICOM object ({frames} frames, {_sop_name(ds)}) without functional groups (no Shared or Per-Frame "
            "Functional Groups Sequence): the position of each frame is not recorded", RE_EXPORT,
        )
    if per_frame is None or len(per_frame) != frames:
        found = "no" if per_frame is None else f"{len(per_frame)} items in its"
        raise InputError(
            path, f"multi-frame DICOM object with {frames} frames but {found} Per-Frame Functional Groups Sequence: the frames' positions are missing",
            f"the file is incomplete or was written wrongly; {RE_EXPORT}",
        )
    shared = shared_seq[0] if shared_seq else Dataset()
    top = Dataset()
    for keyword in KEPT:
        if keyword in ds:
            top[keyword] = ds[keyword]
    views = []
    for number, groups in enumerate(per_frame, start=1):
        view = Dataset()
        view.update(top)
        for sequence, keyword in GEOMETRY:
            value = _group_value(groups, shared, sequence, keyword)
            if value is None:
                raise InputError(
                    path, f"multi-frame DICOM frame {number} of {frames} has no {sequence} > {keyword} in its Per-Frame or Shared Functional Groups "
                    "(missing functional group)", RE_EXPORT,
                )
            setattr(view, keyword, value)
        sequence, keywords = RESCALE
        for keyword, default in zip(keywords, (1.0, 0.0)):
            value = _group_value(groups, shared, sequence, keyword)
            setattr(view, keyword, value if value is not None else ds.get(keyword, default))
        views.append(view)
    return views


def _group_value(groups: Any, shared: Any, sequence: str, keyword: str) -> Any:
    """``keyword`` from the first item of ``sequence`` in the frame's ``groups``, else in ``shared``, else None."""
    for where in (groups, shared):
        items = where.get(sequence) if where is not None else None
        if items and keyword in items[0] and items[0][keyword].value is not None:
            return items[0][keyword].value
    return None


def _sop_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    return str(getattr(uid, "name", uid) or "unknown SOP class")


def _nested(sequence: str, keyword: str, inner: str | None = None) -> Callable[[Any, Any], Any]:
    def get(groups: Any, shared: Any) -> Any:
        if inner is None:
            return _group_value(groups, shared, sequence, keyword)
        items = _group_value(groups, shared, sequence, keyword)
        return items[0].get(inner) if items else None

    return get


# Dimensions that put several frames at one position: (name, attribute shown, getter(per-frame groups, shared groups)).
DIMENSIONS: tuple[tuple[str, str, Callable[[Any, Any], Any]], ...] = (
    ("echoes", "EffectiveEchoTime (ms)", _nested("MREchoSequence", "EffectiveEchoTime")),
    ("b-values", "DiffusionBValue (s/mm2)", _nested("MRDiffusionSequence", "DiffusionBValue")),
    (
        "diffusion directions", "DiffusionGradientOrientation",
        _nested("MRDiffusionSequence", "DiffusionGradientDirectionSequence", "DiffusionGradientOrientation"),
    ),
    ("temporal positions", "TemporalPositionIndex", _nested("FrameContentSequence", "TemporalPositionIndex")),
    ("cardiac phases", "NominalCardiacTriggerDelayTime (ms)", _nested("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")),
    ("stacks", "StackID", _nested("FrameContentSequence", "StackID")),
    (
        "frame types", "FrameType",
        lambda g, s: _group_value(g, s, "MRImageFrameTypeSequence", "FrameType") or _group_value(g, s, "CTImageFrameTypeSequence", "FrameType"),
    ),
)
POSITION_DECIMALS = 2  # mm: positions equal to 0.01 mm are one position (the spacing check's tolerance)


def check_one_image_per_position(path: Path, ds: Any, views: list[Any]) -> None:
    """Refuse an object that holds several images per position, naming the dimensions that tell them apart.

    Only positions held by more than one frame are looked at, so an attribute that varies from slice to
    slice (a StackID per slice, acquisition times) never splits a volume. Duplicated positions that no
    known dimension explains are left to the series' duplicate check, which names the two frames.

    Raises:
        InputError: naming the file, how many images per position, the dimensions with their values, and the fix.
    """
    by_position: dict[tuple[float, ...], list[int]] = defaultdict(list)
    for i, view in enumerate(views):
        by_position[tuple(round(float(v), POSITION_DECIMALS) for v in view.ImagePositionPatient)].append(i)
    repeated = [frames for frames in by_position.values() if len(frames) > 1]
    if not repeated:
        return
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    found = []
    for name, attribute, get in DIMENSIONS:
        values = [_hashable(get(per_frame[i], shared)) for i in range(len(views))]
        if any(len({values[i] for i in frames}) > 1 for frames in repeated):
            distinct = sorted({v for v in values if v is not None}, key=str)
            shown = ", ".join(_show(v) for v in distinct[:8]) + (f", ... ({len(distinct)} in all)" if len(distinct) > 8 else "")
            found.append(f"{len(distinct)} {name} ({attribute} {shown})")
    if not found:
        return
    most = max(len(frames) for frames in repeated)
    raise InputError(
        path,
        f"multi-frame DICOM object with {len(views)} frames at {len(by_position)} positions (up to {most} images per position): "
        f"not one 3D volume, it holds {' and '.join(found)}",
        SPLIT,
    )


def _hashable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    try:
        return tuple(_hashable(v) for v in value)
    except TypeError:
        return str(value)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + " ".join(_show(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
