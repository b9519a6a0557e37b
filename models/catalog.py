"""The model catalog: every spec YAML in :func:`models.spec.catalog_dirs`, loaded without failing on one bad entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.spec import ModelSpec, catalog_dirs, load_spec
from pipeline.errors import SegpipeError


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog file: its ``spec`` when valid, else the ``error`` message."""

    name: str
    path: Path
    spec: ModelSpec | None = None
    error: str | None = None

    @property
    def checkpoint_state(self) -> str:
        """``"none"`` (no checkpoint in the spec), ``"present"`` or ``"missing"`` (declared, not on disk)."""
        if self.spec is None or self.spec.checkpoint is None:
            return "none"
        return "present" if self.spec.checkpoint.is_file() else "missing"


def list_catalog() -> list[CatalogEntry]:
    """All catalog entries, sorted by name; a name found in several folders keeps the first (as lookups do)."""
    entries: dict[str, CatalogEntry] = {}
    for folder in catalog_dirs():
        if not folder.is_dir():
            continue
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.stem in entries:
                continue
            try:
                entries[path.stem] = CatalogEntry(path.stem, path, spec=load_spec(path))
            except SegpipeError as exc:
                entries[path.stem] = CatalogEntry(path.stem, path, error=str(exc))
    return [entries[k] for k in sorted(entries)]
