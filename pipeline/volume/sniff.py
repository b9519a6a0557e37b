"""What a file is, from its first bytes: NIfTI-1/-2 (plain or gzip-compressed), DICOM, gzip, empty.

Used to tell users what they passed when a name and its content disagree (a gzip-compressed
``.nii``, a ``.nii.gz`` that is not compressed, a NIfTI file without an extension). Magic numbers:
gzip ``1f 8b`` at 0; NIfTI-1 ``n+1\\0`` (single file) or ``ni1\\0`` (header of a pair) at 344;
NIfTI-2 ``n+2\\0`` / ``ni2\\0`` at 4; DICOM Part 10 ``DICM`` at 128. A NIfTI pair is a header
``NAME.hdr`` (magic ``ni1``/``ni2``) and its voxels ``NAME.img``; an Analyze 7.5 pair has the same
names and a 348-byte header without the magic.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

FileKind = Literal["nifti1", "nifti2", "dicom", "gzip", "empty", "other"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PAIR_SUFFIXES = (".hdr", ".img")  # a NIfTI-1/-2 (or Analyze 7.5) header and its voxel file
HEAD_BYTES = 352  # NIfTI-1 header (348) and its 4-byte extension flag; covers DICOM's preamble + magic (132)
GZIP_MAGIC = b"\x1f\x8b"


def is_nifti_name(path: str | Path) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def is_pair_name(path: str | Path) -> bool:
    """Whether the file name ends in ``.hdr`` or ``.img`` (any case): one file of a header/image pair."""
    return Path(path).name.lower().endswith(PAIR_SUFFIXES)


def pair_files(path: str | Path) -> tuple[Path, Path]:
    """``(NAME.hdr, NAME.img)`` for either file of a pair (upper-case suffixes when ``path``'s is)."""
    path = Path(path)
    upper = path.suffix.isupper()
    return path.with_suffix(".HDR" if upper else ".hdr"), path.with_suffix(".IMG" if upper else ".img")


def is_pair_header(path: str | Path) -> bool:
    """Whether the file (plain or gzip-compressed) starts with a NIfTI-1/-2 *pair* header (magic ``ni1``/``ni2``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        if head[:2] == GZIP_MAGIC:
            with gzip.open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return False
    return (head[344:348] == b"ni1\0") or (head[4:8] == b"ni2\0")


def is_analyze_header(path: str | Path) -> bool:
    """Whether the file starts like an Analyze 7.5 header: ``sizeof_hdr`` 348 (either byte order) and no NIfTI magic."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    return head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and _kind(head) == "other"


def sniff(path: str | Path) -> tuple[FileKind, bool]:
    """The kind of file at ``path`` and whether it is gzip-compressed.

    Returns:
        ``(kind, gzipped)``: for a gzip file, ``kind`` is what its decompressed start holds (``"gzip"``
        when that is none of the known kinds or cannot be decompressed); ``"empty"`` for 0 bytes.
    """
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        return "empty", False
    if head[:2] != GZIP_MAGIC:
        return _kind(head), False
    try:
        with gzip.open(path, "rb") as f:
            inner = f.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        inner = b""
    kind = _kind(inner) if inner else "other"
    return ("gzip" if kind == "other" else kind), True


def _kind(head: bytes) -> FileKind:
    if head[344:347] in (b"n+1", b"ni1") and head[347:348] == b"\0":
        return "nifti1"
    if head[4:7] in (b"n+2", b"ni2") and head[7:8] == b"\0":
        return "nifti2"
    if head[128:132] == b"DICM":
        return "dicom"
    return "other"


def describe(kind: FileKind, gzipped: bool) -> str:
    """A few words for a message: ``"a gzip-compressed NIfTI-1 file"``, ``"a DICOM file"``, ..."""
    what = {
        "nifti1": "NIfTI-1 file",
        "nifti2": "NIfTI-2 file",
        "dicom": "DICOM file",
        "gzip": "file whose content is neither NIfTI nor DICOM",
        "empty": "empty file (0 bytes)",
        "other": "file that is neither NIfTI nor DICOM (by its first bytes)",
    }[kind]
    return f"a gzip-compressed {what}" if gzipped else f"an {what}" if what[0] in "aeiou" else f"a {what}"
