"""What produced a land-cover statistics entry, recorded per ``(time, scene)`` in ``stats.zarr``.

Five string variables with dims ``(time, scene)`` (``""`` where nothing was recorded: an entry that
does not exist, or one written by a segpipe before 0.1.0 recorded provenance):

* ``source``: the input's absolute path (symbolic links resolved), or its URL / GDAL ``/vsi`` path as given;
* ``model``: the model spec's name;
* ``checkpoint_sha256``: SHA-256 of the checkpoint's bytes (``""`` for a model without a
  checkpoint), the same digest the volume records use (:mod:`pipeline.volume.made_with`);
* ``regions``: the regions file's absolute path, ``""`` for the whole scene;
* ``segpipe_version``: the installed segpipe's version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from models.spec import ModelSpec
from pipeline.raster.ingest import is_local_path

PROVENANCE_VARS = ("source", "model", "checkpoint_sha256", "regions", "segpipe_version")


@dataclass(frozen=True)
class Provenance:
    """What one ``(time, scene)`` entry of ``stats.zarr`` was made from (see the module docstring)."""

    source: str
    model: str
    checkpoint_sha256: str = ""
    regions: str = ""
    segpipe_version: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def source_of(image: str | Path) -> str:
    """The input as recorded: a local path made absolute (symbolic links resolved); a URL or GDAL ``/vsi`` path as given."""
    return str(Path(image).resolve()) if is_local_path(image) else str(image)


def segpipe_version() -> str:
    """The installed segpipe's version (``unknown`` when it runs from a source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segpipe")
    except PackageNotFoundError:
        return "unknown"


def provenance_of(image: str | Path, spec: ModelSpec, regions: str | Path | None) -> Provenance:
    """The :class:`Provenance` of segmenting ``image`` with ``spec`` over ``regions`` (None: the whole scene).

    Hashes the checkpoint once per process and file version (cached in :mod:`pipeline.volume.made_with`).
    """
    from pipeline.volume.made_with import made_with

    return Provenance(
        source=source_of(image),
        model=spec.name,
        checkpoint_sha256=made_with(spec)["checkpoint_sha256"],
        regions="" if regions is None else source_of(regions),
        segpipe_version=segpipe_version(),
    )
