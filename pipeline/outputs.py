"""Checks on output folders made before any work starts, so a bad ``--out`` fails at once with one message,
and the message for an output folder that fills up or turns read-only during a run."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import uuid
from glob import escape as glob_escape
from pathlib import Path
from typing import Literal

from pipeline.errors import InputError

log = logging.getLogger(__name__)

StoreKind = Literal["raster", "volume"]

# the dimension coordinates that tell the two statistics stores apart
_KIND_OF_COORDS: dict[StoreKind, tuple[str, ...]] = {"raster": ("time", "scene", "region", "class"), "volume": ("study", "label")}
_COMMAND: dict[StoreKind, str] = {"raster": "segpipe raster", "volume": "segpipe volume"}

# OSError numbers that say the output folder cannot take the outputs, and what the user can do
WRITE_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another --out"),
    errno.EROFS: ("read-only file system", "choose another --out"),
    errno.EACCES: ("permission denied", "choose another --out, or make it writable"),
    errno.EFBIG: (
        "file too large (the file system's largest file, e.g. 4 GB on FAT32, or the shell's `ulimit -f`)",
        "choose another --out on a file system that takes large files, or raise `ulimit -f`",
    ),
}


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents) and check that files can be written in it.

    Raises:
        InputError: a file is in the way, the folder cannot be created, or a file cannot be created
            in it (read-only file system, permission denied, full disk or quota).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file, not a folder", "give --out a folder; it is created when missing")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(path, f"{parent} is a file, so the folder cannot be created", "give --out a path inside a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem, fix = _problem(exc, "give --out a folder you can write to")
        raise InputError(path, f"cannot create the output folder: {problem}", fix) from exc
    try:
        _try_writing(path)
    except OSError as exc:
        if created:
            remove_if_empty(path)
        problem, fix = _problem(exc, "choose another --out")
        raise InputError(path, f"not writable: {problem}", fix) from exc
    return path


def _try_writing(folder: Path) -> None:
    """Create, write and remove a small temporary file in ``folder`` (OSError when that fails)."""
    handle, name = tempfile.mkstemp(prefix=".segpipe-write-check-", dir=folder)
    try:
        os.write(handle, b"segpipe")
    finally:
        os.close(handle)
        os.unlink(name)


def _problem(exc: OSError, fix: str) -> tuple[str, str]:
    """What ``exc`` says about a folder, and the fix (``fix`` unless the error has its own)."""
    return WRITE_PROBLEMS.get(exc.errno or 0, (exc.strerror or str(exc), fix))


def output_write_error(out_dir: str | Path, exc: OSError, *, writing: str) -> InputError | None:
    """The :class:`InputError` for ``exc``, raised while writing ``writing`` into ``out_dir``, when it
    says the folder cannot take the outputs (full disk or quota, read-only file system, permission
    denied; :data:`WRITE_PROBLEMS`); None for any other error, which is not the user's to fix, and
    for one naming a file outside ``out_dir`` (a read-only or unreadable input is not the output's).

    Example: ``out: no space left on device writing the outputs of case01 (free space or choose another --out)``.
    """
    known = WRITE_PROBLEMS.get(exc.errno or 0)
    if known is None or not _names_a_file_in(exc, out_dir):
        return None
    problem, fix = known
    return InputError(out_dir, f"{problem} writing {writing}", fix)


def _names_a_file_in(exc: OSError, folder: str | Path) -> bool:
    """Whether ``exc`` is about a file in ``folder``, or names no file (then it is taken to be)."""
    if exc.filename is None:
        return True
    return Path(os.fsdecode(exc.filename)).resolve().is_relative_to(Path(folder).resolve())


def remove_if_empty(folder: str | Path) -> None:
    """Remove ``folder`` if it is an empty folder (one a failed run created); otherwise leave it."""
    try:
        Path(folder).rmdir()
    except OSError:
        pass


def stats_store_kind(store: str | Path) -> StoreKind | None:
    """``raster`` or ``volume`` for an existing statistics store, ``None`` when there is none (or it is not one of ours)."""
    store = Path(store)
    if not store.is_dir():
        return None
    names = {p.name for p in store.iterdir()}
    for kind, coords in _KIND_OF_COORDS.items():
        if all(c in names for c in coords):
            return kind
    return None


def check_stats_store(store: str | Path, kind: StoreKind) -> None:
    """Refuse to mix statistics: ``store`` must be absent or hold ``kind`` statistics."""
    found = stats_store_kind(store)
    if found is not None and found != kind:
        raise InputError(
            store,
            f"holds {found} statistics (from {_COMMAND[found]}); {_COMMAND[kind]} cannot add its rows there",
            f"give {_COMMAND[kind]} its own --out folder",
        )


TEMPORARY_TOKEN = re.compile(r"[0-9a-f]{8}")
"""The random part of segpipe's temporary names: ``<name>.tmp-<8 hex digits>`` (``uuid4().hex[:8]``)."""


def temporary_name(path: Path, kind: str = "tmp") -> Path:
    """A fresh sibling name ``<name>.<kind>-<8 hex digits>`` for writing ``path`` (then renamed into place)."""
    return path.with_name(f"{path.name}.{kind}-{uuid.uuid4().hex[:8]}")


def stale_temporaries(path: Path, kind: str = "tmp") -> list[Path]:
    """The siblings of ``path`` named as :func:`temporary_name` names them, and nothing else: a user's
    ``stats.zarr.old-jan`` backup or ``stats.zarr.tmp-mine`` folder beside the store is not ours to touch."""
    prefix = f"{path.name}.{kind}-"
    return sorted(
        p for p in path.parent.glob(f"{glob_escape(prefix)}*") if TEMPORARY_TOKEN.fullmatch(p.name.removeprefix(prefix)) is not None
    )


def remove_stale_temporaries(path: Path) -> None:
    """Remove the ``<name>.tmp-<8 hex>`` siblings of ``path`` (:func:`stale_temporaries`): what a
    killed run (SIGKILL, power loss) was writing when it died. Nothing renames them into place, so
    they would stay forever (a killed ingest of a large scene leaves gigabytes). Callers make sure no
    live run is writing one: a scene's outputs are written by one run at a time, the statistics store
    under its lock."""
    for stale in stale_temporaries(path):
        log.info("removing %s, left by an interrupted run", stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
