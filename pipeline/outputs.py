"""Checks on output folders made before any work starts, so a bad ``--out`` fails at once with one message."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.errors import InputError

StoreKind = Literal["raster", "volume"]

# the dimension coordinates that tell the two statistics stores apart
_KIND_OF_COORDS: dict[StoreKind, tuple[str, ...]] = {"raster": ("time", "scene", "region", "class"), "volume": ("study", "label")}
_COMMAND: dict[StoreKind, str] = {"raster": "segpipe raster", "volume": "segpipe volume"}


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents); an existing file there is an :class:`InputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file, not a folder", "give --out a folder; it is created when missing")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(path, f"{parent} is a file, so the folder cannot be created", "give --out a path inside a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(path, f"cannot create the output folder ({exc.strerror or exc})", "give --out a folder you can write to") from exc
    return path


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
