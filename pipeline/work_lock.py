"""One run at a time per scene (or study) and output folder: an exclusive lock file in the work folder.

Two runs of the same input into the same ``--out`` (an overlapping retry of a nightly job) would
share one work store and one set of outputs: one run's ingest or clean-up removes what the other is
writing. :func:`work_lock` lets the first run in and refuses the second at once with an
:class:`~pipeline.errors.InputError` naming the input, the folder and the holder's pid; the second
run then touches nothing of the first's.

The lock is a POSIX ``flock`` (non-blocking) on ``<work_dir>/<name>.lock``, which holds the holder's
pid and is removed on release. ``flock`` locks die with their process, so a killed run never
leaves a scene locked: the next run takes the lock on the file it left. ``flock`` is local to one
machine (and may not lock across hosts on network file systems): runs on several hosts into one
shared ``--out`` are not kept apart. Without ``fcntl`` (Windows) the lock does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pipeline.errors import InputError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
Locked = Literal["scene", "study"]  # what is being segmented, for the message


@contextlib.contextmanager
def work_lock(work_dir: str | Path, name: str, *, subject: str | Path, out_dir: str | Path, what: Locked = "scene") -> Iterator[Path]:
    """Hold the exclusive lock of ``name`` in ``work_dir`` (created if missing) for the ``with`` block.

    Args:
        work_dir: the output folder's work folder (e.g. ``DIR/.work``); the lock file goes there.
        name: the scene's or study's output stem.
        subject: the input, named in the error.
        out_dir: the output folder, named in the error.
        what: ``scene`` or ``study``, for the message.

    Yields:
        The lock file's path (``<work_dir>/<name>.lock``), removed when the block ends.

    Raises:
        InputError: another process holds the lock (another run is segmenting ``subject`` into
            ``out_dir``); raised at once, without waiting.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(work_dir) / f"{name}{LOCK_SUFFIX}"
        return
    path = Path(work_dir) / f"{name}{LOCK_SUFFIX}"
    fd = _acquire(fcntl, path, subject=subject, out_dir=out_dir, what=what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        # unlink before unlocking: a run waiting on this file then finds it gone and retries (_acquire)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _acquire(fcntl, path: Path, *, subject: str | Path, out_dir: str | Path, what: Locked) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; InputError when another process holds it.

    The holder unlinks the file before unlocking, so the file locked here may no longer be the one at
    ``path`` (removed, or replaced by a newer run's): only a lock on the file now at ``path`` counts.
    """
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            stale = not _is_current(fd, path)
            os.close(fd)
            if stale:  # the holder was releasing it: try the file now there
                continue
            raise InputError(
                subject,
                f"another segpipe run is segmenting this {what} into this folder (pid {holder}; --out {out_dir})",
                "wait for it to finish, or use another --out",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            return fd
        os.close(fd)  # locked a file its holder had already removed: lock the one now there


def _open(path: Path) -> int:
    """Open (creating) the lock file, creating its folder again if a finishing run just removed it."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed (empty) between mkdir and open
            continue


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file now at ``path``."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


def _holder(fd: int) -> str:
    """The pid written in the lock file; ``unknown`` when the holder, which writes it just after taking
    the lock, has not done so within ~0.2 s."""
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


def discard_unreadable_store(store: str | Path) -> bool:
    """Remove ``store`` when it exists but is not a readable zarr store; return whether it was removed.

    For a scene's work store, which is our own scratch (left broken by a crash, or by two runs at once
    before :func:`work_lock`): the caller holds the scene's lock, so no live run is using it, and
    starting that scene's ingest afresh is all that is lost. A readable store is left for the
    ingest to reuse or replace.
    """
    store = Path(store)
    if not store.exists() and not store.is_symlink():
        return False
    problem = _unreadable(store)
    if problem is None:
        return False
    log.warning("%s: %s, left by an interrupted run; removing it and starting this scene afresh", store, problem)
    if store.is_dir() and not store.is_symlink():
        shutil.rmtree(store)
    else:  # a file, or a link (removed, never what it points to)
        store.unlink()
    return True


def _unreadable(store: Path) -> str | None:
    """Why ``store`` is not a readable zarr store, or None when it opens."""
    import zarr

    if not store.is_dir():
        return "not a folder"
    if not (store / "zarr.json").is_file():
        return "not a zarr store (no zarr.json)"
    try:
        zarr.open_group(store, mode="r", use_consolidated=False)
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a broken store
        return f"not a readable zarr store ({type(exc).__name__}: {exc})"
    return None
