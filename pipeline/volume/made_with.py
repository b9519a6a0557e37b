"""What made a study's labels, recorded in ``S.stats.json`` so a later run knows whether they still hold.

A finished study is skipped only when its record equals the record of the current run: the model
spec (name, architecture and parameters, checkpoint file, classes, window, overlap, blend,
normalisation, orientation, spacing) and the reader's ``volume_index``. The checkpoint is identified
by the SHA-256 of its bytes (computed once per process and file version: a rewritten identical
checkpoint still matches, a retrained one does not; its path is not part of the record, so moving
it changes nothing). Values are plain JSON (no ``null``), so a record read back from
``S.stats.json`` compares equal to a fresh one.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.spec import ModelSpec


def made_with(spec: ModelSpec, *, volume_index: int | None = None) -> dict[str, Any]:
    """The record of ``spec`` (and the reader's ``volume_index``; -1 for none), as read back from JSON."""
    record = {
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
        "volume_index": -1 if volume_index is None else int(volume_index),
    }
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
    """SHA-256 of the file at ``path``; ``size`` and ``mtime_ns`` key the cache on the file's version."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def why_redo(old: dict[str, Any], new: dict[str, Any], *, old_model: str = "") -> str | None:
    """Why outputs recorded as made with ``old`` do not hold for ``new``; None when they do.

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
    changed = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
    return f"made by model '{name}' with a different {', '.join(changed)}"
