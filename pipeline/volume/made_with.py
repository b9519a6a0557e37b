"""What made a study's labels, recorded in ``S.stats.json`` so a later run knows whether they still hold.

The record (``made_with`` in ``S.stats.json``) has two parts:

* the model spec (:func:`made_with`): name, architecture and parameters, checkpoint file, classes,
  window, overlap, blend, normalisation, orientation, spacing, nodata. The checkpoint is identified by the
  SHA-256 of its bytes (computed once per process and file version: a rewritten identical checkpoint
  still matches, a retrained one does not; its path is not part of the record, so moving it changes
  nothing);
* what was segmented (:class:`InputRecord`, under the key ``input``): the absolute source path
  (symbolic links resolved, as the flows give them), the DICOM SeriesInstanceUID read, the 4D
  ``volume_index`` and a cheap fingerprint of the input read from file metadata only (a NIfTI file's
  size and mtime; for a DICOM folder a SHA-256 over the sorted relative name, size and mtime of
  every file under it, the files the reader scans).

A finished study is skipped only when both parts match the current run (:func:`why_redo`); outputs
made from *another* input under the same output name (another source path, another DICOM series of
the same folder, another volume of the same 4D file) are a conflict, not a redo
(:func:`check_same_source`). Values are plain JSON (no ``null``), so a record read back from
``S.stats.json`` compares equal to a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.spec import ModelSpec
from pipeline.errors import InputError
from pipeline.volume.sniff import is_pair_name, pair_files

INPUT_KEY = "input"


@dataclass(frozen=True)
class InputRecord:
    """What a study's labels were made from (the ``input`` part of the record).

    Args:
        source: the study's absolute path (symbolic links resolved).
        series_uid: DICOM: the SeriesInstanceUID read; before reading, the one asked for ("" for
            the folder's only series). "" for NIfTI.
        volume_index: 4D NIfTI: the volume read (0-based); -1 for none.
        fingerprint: :func:`input_fingerprint` of ``source``.
    """

    source: str
    series_uid: str = ""
    volume_index: int = -1
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(raw: Any) -> InputRecord | None:
        """The record ``raw`` (as read from JSON), or None when it is absent or malformed."""
        try:
            return InputRecord(str(raw["source"]), str(raw["series_uid"]), int(raw["volume_index"]), str(raw["fingerprint"]))
        except (KeyError, TypeError, ValueError):
            return None


def input_record(
    path: str | Path, *, series_uid: str | None = None, volume_index: int | None = None, out_dir: str | Path | None = None
) -> InputRecord:
    """The :class:`InputRecord` of the study at ``path`` as asked for (reads file metadata only);
    ``out_dir``: the run's output folder, left out of a DICOM folder's fingerprint when inside it."""
    source = Path(path).resolve()
    if is_pair_name(source) and pair_files(source)[0].is_file():
        source = pair_files(source)[0]  # a NIfTI pair given by its .img is the same input as by its .hdr
    exclude = Path(out_dir).resolve() if out_dir is not None else None
    return InputRecord(str(source), series_uid or "", -1 if volume_index is None else int(volume_index), input_fingerprint(source, exclude=exclude))


def input_fingerprint(path: Path, *, exclude: Path | None = None) -> str:
    """A cheap fingerprint of a study, from file metadata only (no pixel is read).

    A file: its size (bytes) and modification time (ns); a NIfTI ``.hdr``/``.img`` pair: those of both
    files. A DICOM folder: the number of files under
    it (recursively, the files the reader scans) and the SHA-256 of their sorted
    ``(relative name, size, mtime_ns)``: adding, removing, renaming or rewriting a file changes it.
    The folder ``exclude`` (the run's own outputs, when ``--out`` is inside the series folder) is
    left out, so a run's outputs do not change its input's fingerprint. ``missing`` when ``path``
    cannot be read (reading the study reports why).
    """
    try:
        if path.is_dir():
            return _folder_fingerprint(path, exclude)
        if is_pair_name(path) and all(p.is_file() for p in pair_files(path)):
            return "; ".join(f"{p.suffix.lower()[1:]} {_file_fingerprint(p)}" for p in pair_files(path))
        return _file_fingerprint(path)
    except OSError:
        return "missing"


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}"


def _folder_fingerprint(folder: Path, exclude: Path | None) -> str:
    entries = []
    for top, dirs, files in os.walk(folder):
        if exclude is not None:
            dirs[:] = [d for d in dirs if Path(top, d).resolve() != exclude]
        for name in files:
            path = Path(top, name)
            if path.is_file():
                stat = path.stat()
                entries.append(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode("utf-8", "surrogateescape"))
    return f"{len(entries)} files, sha256 {digest.hexdigest()}"


def made_with(spec: ModelSpec, *, source: InputRecord | None = None) -> dict[str, Any]:
    """The record of ``spec`` (and, under ``input``, of the study ``source``), as read back from JSON."""
    record: dict[str, Any] = {
        "model": spec.name,
        "architecture": spec.architecture,
        "params": json.dumps(spec.params, sort_keys=True, default=str),
        **_checkpoint(spec.checkpoint),
        "classes": [[c.id, c.name] for c in spec.classes],
        "window": [int(w) for w in spec.window],
        "overlap": float(spec.overlap),
        "blend": str(spec.blend),
        "normalize": repr(spec.normalize),
        "orientation": spec.orientation or "",
        "spacing": [float(s) for s in spec.spacing or ()],
        "nodata": int(spec.nodata),  # the label written where the input has no data
    }
    if source is not None:
        record[INPUT_KEY] = source.to_dict()
    return json.loads(json.dumps(record))


def _checkpoint(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {"checkpoint_sha256": ""}
    try:
        stat = Path(path).stat()
    except OSError:
        return {"checkpoint_sha256": "missing"}  # loading the model reports it
    return {"checkpoint_sha256": _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)}


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of the file at ``path``; ``size`` and ``mtime_ns`` key the cache on the file's version.

    Read in 1 MiB pieces (``hashlib.file_digest`` is Python 3.11+; segpipe runs on 3.10).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def check_same_source(old: dict[str, Any], new: InputRecord, outputs: str) -> None:
    """Refuse to treat outputs made from another input as this study's.

    Another input is another file or folder with the same stem, or another DICOM series of the same
    folder (both ``series_uid`` set and different), or another volume of the same 4D NIfTI file (both
    ``volume_index`` set and different): the outputs are named by the stem only, so segmenting it
    would replace the other one's labels and statistics row. A changed fingerprint of the same
    series or volume is a new version of the input, not another input (:func:`why_redo` redoes it).

    Args:
        old: the record in the finished study's ``S.stats.json``.
        new: what this run segments (``series_uid`` as asked: "" when none was asked for).
        outputs: how to name the study's outputs in the message, e.g. ``out/case01.*``.

    Raises:
        InputError: ``old`` was made from another input than ``new`` (the message names both and
            the fix: another ``--out``, or ``--force``); records without an input part pass.
    """
    before = InputRecord.from_dict(old.get(INPUT_KEY))
    if before is None:
        return
    if before.source != new.source:
        raise InputError(outputs, f"was made from {before.source}, not {new.source}", "use another --out, rename the input, or --force to replace it")
    if before.series_uid and new.series_uid and before.series_uid != new.series_uid:
        made = f"series {before.series_uid} of {before.source}, not from series {new.series_uid}"
    elif before.volume_index >= 0 and new.volume_index >= 0 and before.volume_index != new.volume_index:
        made = f"volume {before.volume_index} of {before.source}, not from volume {new.volume_index}"
    else:
        return
    raise InputError(outputs, f"was made from {made}", "use another --out for each, or --force to replace it")


def why_redo(old: dict[str, Any], new: dict[str, Any], *, old_model: str = "") -> str | None:
    """Why outputs recorded as made with ``old`` do not hold for ``new``; None when they do.

    Model first (another model, a record without settings or without an input part, other
    settings), then the input (:func:`why_input_changed`); ``new`` without an input part compares the
    model only.

    Args:
        old: the record in the finished study's ``S.stats.json`` (empty when it has none).
        new: the record of this run (:func:`made_with`).
        old_model: the model name in that ``S.stats.json``, for studies without a record.
    """
    if old == new:
        return None
    name = old.get("model", old_model)
    if name != new["model"]:
        return f"made by model '{name}', not '{new['model']}'"
    if not old:
        return f"made by model '{name}' by an older segpipe that did not record its checkpoint and settings"
    before = InputRecord.from_dict(old.get(INPUT_KEY))
    if INPUT_KEY in new and before is None:
        return f"made by model '{name}' by an older segpipe that did not record which input it segmented"
    changed = sorted(k for k in new.keys() | old.keys() if k != INPUT_KEY and old.get(k) != new.get(k))
    if changed:
        return f"made by model '{name}' with a different {', '.join(changed)}"
    if INPUT_KEY not in new or before is None:
        return None
    return why_input_changed(before, InputRecord(**new[INPUT_KEY]))


def why_input_changed(old: InputRecord, new: InputRecord) -> str | None:
    """Why outputs made from ``old`` are not those of ``new``; None when they are.

    ``new.series_uid`` empty (no series asked for) matches any series: the folder is unchanged
    (same fingerprint), so its only series is still the one read.
    """
    if old.source != new.source:
        return f"made from {old.source}, not {new.source}"
    if old.volume_index != new.volume_index:
        return f"made from {_volume(old.volume_index)}, not {_volume(new.volume_index)}"
    if new.series_uid and old.series_uid != new.series_uid:
        return f"made from series {old.series_uid or '(none recorded)'}, not {new.series_uid}"
    if old.fingerprint != new.fingerprint:
        return "made from an earlier version of the input, which changed since the last run"
    return None


def _volume(index: int) -> str:
    return "the 3D image" if index < 0 else f"volume {index}"
