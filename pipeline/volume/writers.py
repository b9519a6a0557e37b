"""Label outputs of a study: NIfTI labels, a JSON sidecar, ITK-SNAP and 3D Slicer colour tables, DICOM SEG.

Every writer writes to a temporary name in the destination folder and renames it into place, so a
file with the final name is always complete. Label arrays are ``(Z, Y, X)`` on the native grid (see
:mod:`pipeline.volume.volume`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from models.spec import ClassInfo
from pipeline.errors import InputError
from pipeline.volume.volume import DicomSource, HeaderInfo

LABELS_DESCRIP = "segpipe labels"
"""The NIfTI header description of every label volume segpipe writes (how it tells its own files)."""


def label_dtype(class_ids: Sequence[int], nodata: int | None = None) -> str:
    """``uint8`` when every id and ``nodata`` fit (``max(ids, nodata) <= 255``, as for rasters), else ``uint16``."""
    return "uint8" if max(*class_ids, -1 if nodata is None else nodata) <= 255 else "uint16"


def temporary_for(path: Path) -> Path:
    """The hidden name ``.tmp-<pid>-<name>`` a study's output file is written under, then renamed.
    The real suffixes stay at the end so format-sniffing writers (nibabel, pydicom) behave."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def stale_temporaries(path: Path) -> list[Path]:
    """The :func:`temporary_for` names of ``path`` left in its folder by runs killed while writing it: exactly
    ``.tmp-<digits>-<name>``, so another study's files (``case01.x`` beside ``case01``) never match.
    Call under the study's work lock (no live run is writing them)."""
    pattern = re.compile(rf"\.tmp-\d+-{re.escape(path.name)}")
    return sorted(p for p in path.parent.glob(f".tmp-*-{glob_escape(path.name)}") if pattern.fullmatch(p.name))


def write_labels_nifti(labels: np.ndarray, header: HeaderInfo, path: str | Path) -> Path:
    """Write ``labels`` ``(Z, Y, X)`` as NIfTI-1 with the input's qform/sform (matrices and codes) and units.

    The dtype of ``labels`` (uint8/uint16) is kept; no intensity scaling is stored.
    """
    import nibabel as nib

    path = Path(path)
    xyz = np.asarray(labels).T  # (Z, Y, X) -> (X, Y, Z), NIfTI voxel order
    img = nib.Nifti1Image(xyz, affine=None)
    hdr = img.header
    hdr.set_data_dtype(xyz.dtype)
    img.set_sform(np.asarray(header.sform), code=int(header.sform_code))
    img.set_qform(np.asarray(header.qform), code=int(header.qform_code))
    if header.xyz_units in ("mm", "meter", "micron", "unknown"):
        hdr.set_xyzt_units(xyz=header.xyz_units)
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    hdr["descrip"] = LABELS_DESCRIP.encode()
    tmp = temporary_for(path)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    tmp = temporary_for(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def sidecar_json(classes: Sequence[ClassInfo], *, source: str, model: str, nodata: int | None = None) -> str:
    """The ``<stem>.labels.json`` sidecar: label id -> name and colour, plus provenance and the
    ``nodata`` label value (voxels without image data; not a class, so not under ``labels``)."""
    doc = {
        "source": source,
        "model": model,
        "labels": {str(c.id): {"name": c.name, "color": c.color} for c in classes},
    }
    if nodata is not None:
        doc["nodata"] = nodata
    return json.dumps(doc, indent=1)


def itksnap_label_table(classes: Sequence[ClassInfo], nodata: int | None = None) -> str:
    """ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``); id 0 is transparent, and the
    ``nodata`` value, when given, is listed as ``"nodata"``: black, transparent and hidden."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    IDX:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "################################################",
    ]
    for c in sorted(classes, key=lambda c: c.id):
        r, g, b = c.rgb
        alpha, vis = ("0", 0) if c.id == 0 else ("1", 1)
        name = c.name.replace('"', "'")
        lines.append(f'{c.id:5d} {r:5d} {g:4d} {b:4d} {alpha:>8} {vis:2d} {vis:2d}    "{name}"')
    if nodata is not None:
        lines.append(f'{nodata:5d} {0:5d} {0:4d} {0:4d} {"0":>8} {0:2d} {0:2d}    "nodata"')
    return "\n".join(lines) + "\n"


def slicer_color_table(classes: Sequence[ClassInfo], nodata: int | None = None) -> str:
    """3D Slicer colour table (``.ctbl``): ``id name R G B A`` per line, names without spaces; the
    ``nodata`` value, when given, last as ``nodata 0 0 0 0`` (transparent)."""
    lines = ["# Color table file written by segpipe", f"# {len(classes) + (nodata is not None)} values"]
    for c in sorted(classes, key=lambda c: c.id):
        r, g, b = c.rgb
        alpha = 0 if c.id == 0 else 255
        lines.append(f"{c.id} {'_'.join(c.name.split()) or f'label_{c.id}'} {r} {g} {b} {alpha}")
    if nodata is not None:
        lines.append(f"{nodata} nodata 0 0 0 0")
    return "\n".join(lines) + "\n"


def _lo(text: str) -> str:
    """``text`` as one DICOM LO value: at most 64 characters, a backslash (the value separator) as ``/``."""
    return text.replace("\\", "/")[:64]


def _seg_sources(source: DicomSource, pixel_array: np.ndarray) -> tuple[list, np.ndarray]:
    """The source datasets (read without pixel data) and the SEG frames in the order highdicom pairs them.

    Single-frame slices: one dataset per z, ``pixel_array`` as is. An enhanced multi-frame source: the
    one object, and ``pixel_array`` ``(Z, Y, X)`` in z order put back in the object's frame order
    (frame ``source.frame_numbers[z]`` gets z), as highdicom maps frame ``i`` to source frame ``i + 1``.
    """
    from pipeline.volume.dicom import (
        read_slice,  # Part 10 files and bare datasets alike
    )

    if not source.frame_numbers:
        return [read_slice(f, stop_before_pixels=True) for f in source.files], pixel_array
    image = read_slice(source.files[0], stop_before_pixels=True)
    frames = np.zeros((int(image.NumberOfFrames), *pixel_array.shape[1:]), dtype=pixel_array.dtype)
    frames[np.asarray(source.frame_numbers) - 1] = pixel_array
    return [image], frames


def write_dicom_seg(
    labels: np.ndarray,
    source: DicomSource,
    classes: Sequence[ClassInfo],
    path: str | Path,
    *,
    model_name: str,
    software_version: str = "segpipe",
) -> Path:
    """A DICOM SEG (BINARY, one segment per non-zero class) referencing the source series.

    Args:
        labels: ``(Z, Y, X)`` on the source grid, z in the order of ``source.files`` (of ``source.frame_numbers``
            for an enhanced multi-frame source, whose frames the SEG references). A voxel whose
            value is no non-zero class id (background 0, the nodata value) is in no segment.
        source: the series read (its files are re-read without pixel data for the references).
        classes: label classes; id 0 is background and gets no segment.
        path: output ``.dcm`` file.
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:  # pragma: no cover - declared dependencies
        raise InputError("highdicom", "DICOM SEG output needs highdicom", "pip install highdicom") from exc

    path = Path(path)
    segments = [c for c in sorted(classes, key=lambda c: c.id) if c.id != 0]
    if not segments:
        raise InputError(path, "no non-background class to write as a DICOM SEG segment", "give the model at least one class with id != 0")
    lut = np.zeros(int(max(max(c.id for c in classes), int(labels.max(initial=0)))) + 1, dtype=np.uint16)
    for number, c in enumerate(segments, start=1):
        lut[c.id] = number
    pixel_array = lut[np.asarray(labels)]
    pixel_array = pixel_array.astype(np.uint8 if len(segments) < 256 else np.uint16)
    images, pixel_array = _seg_sources(source, pixel_array)
    labels_text = [_lo(c.name) for c in segments]
    model_text = _lo(model_name) or "segpipe"
    description = _lo(f"segpipe {model_name}")
    algorithm = hd.AlgorithmIdentificationSequence(name=model_text, family=codes.cid7162.ArtificialIntelligence, version=software_version)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*c.rgb) if hasattr(hd.color.CIELabColor, "from_rgb") else None,
        )
        for number, (c, label) in enumerate(zip(segments, labels_text), start=1)
    ]
    # highdicom copies the source's SpecificCharacterSet (often none: the default, ASCII-only repertoire).
    # A class or model name outside it was written as "?" or as bytes no reader can decode ("Knochen µ"
    # failed dciodvfy); UTF-8 (ISO_IR 192) holds every name, and pydicom re-encodes the copied patient data.
    ours = [*labels_text, model_text, description, software_version]
    charset = {} if all(text.isascii() for text in ours) else {"specific_character_set": "ISO_IR 192"}
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segpipe",
        manufacturer_model_name=model_text,
        software_versions=software_version,
        device_serial_number="0",
        series_description=description,
        **charset,
    )
    tmp = temporary_for(path)
    try:
        seg.save_as(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
