"""What a killed run's ``done`` record may be trusted with when the next run resumes from it.

The engine writes a finished block's output chunk, then marks the block in ``done``
(:func:`pipeline.engine.write_block`), and zarr writes each chunk file whole (under a temporary name,
then renamed). A block marked done whose output chunk is missing (a chunk lost with a disk, removed
by hand) reads back as the array's fill value: resuming from it would write class 0 there, looking
complete. A chunk that does not decode (truncated by a crash of the machine) failed every later run
with a raw codec error. :func:`forget_damaged_blocks` checks the finished blocks' chunks before the
engine runs and marks the damaged ones unfinished, so the engine computes them again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def forget_damaged_blocks(out: Any, done: Any, *, ignore: np.ndarray | None = None, what: str = "") -> int:
    """Mark unfinished, in ``done``, the finished blocks whose chunk of ``out`` is missing or does not decode.

    Args:
        out: the engine's output ``zarr.Array``: labels ``(*spatial)`` with one chunk per block, or
            logits ``(K, *spatial)`` with chunks ``(K, *block)``.
        done: the ``uint8`` block-grid record (one chunk per element). An element whose chunk does
            not decode counts as unfinished and is written again.
        ignore: optional bool array shaped like ``done``: blocks whose output is never read (a
            raster's blocks without a valid pixel), left as they are.
        what: named in the log message (the work store).

    Returns:
        The number of blocks marked unfinished.
    """
    finished, readable = _read_done(done)
    forgotten = []
    for t in zip(*np.nonzero(finished)):
        t = tuple(int(i) for i in t)
        if ignore is not None and ignore[t]:
            continue
        coords = t if out.ndim == len(t) else (0, *t)
        if not _chunk_intact(out, coords):
            forgotten.append(t)
    if not readable:  # rewrite the whole record: its undecodable elements included
        keep = finished.copy()
        for t in forgotten:
            keep[t] = False
        done[...] = keep.astype(np.uint8)
    else:
        for t in forgotten:
            done[tuple(slice(i, i + 1) for i in t)] = np.zeros((1,) * len(t), dtype=np.uint8)
    if forgotten or not readable:
        log.warning(
            "%s: %d finished block(s) have a missing or damaged output chunk%s; they are segmented again",
            what or "work store", len(forgotten), "" if readable else " (and the finished-block record was damaged)",
        )
    return len(forgotten)


def _read_done(done: Any) -> tuple[np.ndarray, bool]:
    """The finished blocks, and whether every element of ``done`` decoded (an undecodable one is unfinished)."""
    try:
        return np.asarray(done[...], dtype=bool), True
    except Exception:  # noqa: BLE001 - the codecs raise RuntimeError, ValueError, ... for a damaged chunk
        finished = np.zeros(done.shape, dtype=bool)
        for t in np.ndindex(*done.shape):
            try:
                finished[t] = bool(np.asarray(done.get_block_selection(t)).any())
            except Exception:  # noqa: BLE001
                pass
        return finished, False


def _chunk_intact(array: Any, coords: tuple[int, ...]) -> bool:
    """Whether the chunk ``coords`` of ``array`` is stored (checked where the store is a local folder) and decodes."""
    root = getattr(array.store, "root", None)
    if root is not None:
        key = array.metadata.chunk_key_encoding.encode_chunk_key(coords)
        if not (Path(root) / array.path / key).is_file():
            return False
    try:
        array.get_block_selection(coords)
    except Exception:  # noqa: BLE001 - a truncated or garbled chunk
        return False
    return True
