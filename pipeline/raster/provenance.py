"""What produced a land-cover statistics entry, recorded per ``(time, scene)`` in ``stats.zarr``.

Five string variables with dims ``(time, scene)`` (``""`` where nothing was recorded: an entry that
does not exist, or one written by a segpipe before 0.1.0 recorded provenance):

* ``source``: the input's absolute path (symbolic links resolved), or its URL / GDAL ``/vsi`` path as given
  but for its credentials (a signed URL's signature, a password: :func:`pipeline.urls.public_url`), so a
  URL signed anew for a retry is the same source;
* ``model``: the model spec's name;
* ``checkpoint_sha256``: SHA-256 of the checkpoint's bytes (``""`` for a model without a
  checkpoint), the same digest the volume records use (:mod:`pipeline.volume.made_with`);
* ``regions``: the regions file's absolute path, ``""`` for the whole scene; with ``|layername=NAME``
  appended when a layer was named (``--region-layer``; GDAL's and QGIS's way of writing a layer);
* ``segpipe_version``: the installed segpipe's version;
* ``inputs_sha256``: SHA-256 of what else decides the entry: the input's and the regions file's
  size and modification time (local files, a VRT mosaic's tiles included), an HTTP(S) input's version on
  its server (its ETag, else Last-Modified, and size: :mod:`pipeline.raster.object_version`; ``""`` in
  the digest for ``s3://``, ``/vsis3/`` and other schemes that are not asked, as before), the region
  field, the region layer (when one was named: entries made before layers could be named keep their
  digest) and the bands. ``""`` (no digest) for a URL whose server gives no version: its entry is never
  taken as done. An entry whose provenance (but the version) equals a new run's is that run's work
  already done: a retried run skips it (:func:`pipeline.raster.entries.entry_done`); an object replaced
  on the server since is not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from models.spec import ModelSpec
from pipeline.raster.object_version import ObjectVersion, object_version
from pipeline.raster.probe import is_local_path, mosaic_sources
from pipeline.urls import public_url

PROVENANCE_VARS = ("source", "model", "checkpoint_sha256", "regions", "segpipe_version", "inputs_sha256")


@dataclass(frozen=True)
class Provenance:
    """What one ``(time, scene)`` entry of ``stats.zarr`` was made from (see the module docstring)."""

    source: str
    model: str
    checkpoint_sha256: str = ""
    regions: str = ""
    segpipe_version: str = ""
    inputs_sha256: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def source_of(image: str | Path) -> str:
    """The input as recorded: a local path made absolute (symbolic links resolved); a URL or GDAL ``/vsi``
    path as given, but for its credentials (:func:`pipeline.urls.public_url`)."""
    return str(Path(image).resolve()) if is_local_path(image) else public_url(image)


def segpipe_version() -> str:
    """The installed segpipe's version (``unknown`` when it runs from a source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segpipe")
    except PackageNotFoundError:
        return "unknown"


def provenance_of(
    image: str | Path,
    spec: ModelSpec,
    regions: str | Path | None,
    *,
    region_field: str | None = None,
    region_layer: str | None = None,
    bands: Sequence[int] | None = None,
    version: ObjectVersion | None = None,
) -> Provenance:
    """The :class:`Provenance` of segmenting ``image`` with ``spec`` over ``regions`` (None: the whole scene).

    Hashes the checkpoint once per process and file version (cached in :mod:`pipeline.volume.made_with`).
    ``version``: the image's version on its server (:func:`~pipeline.raster.object_version.object_version`); None: asked here.
    """
    from pipeline.volume.made_with import made_with

    return Provenance(
        source=source_of(image),
        model=spec.name,
        checkpoint_sha256=made_with(spec)["checkpoint_sha256"],
        regions=regions_of(regions, region_layer),
        segpipe_version=segpipe_version(),
        inputs_sha256=inputs_sha256(image, regions, region_field=region_field, region_layer=region_layer, bands=bands, version=version),
    )


def regions_of(regions: str | Path | None, layer: str | None = None) -> str:
    """The regions as recorded: ``""`` (whole scene), the file (:func:`source_of`), or ``file|layername=NAME``."""
    if regions is None:
        return ""
    return source_of(regions) if layer is None else f"{source_of(regions)}|layername={layer}"


def inputs_sha256(
    image: str | Path,
    regions: str | Path | None,
    *,
    region_field: str | None,
    bands: Sequence[int] | None,
    region_layer: str | None = None,
    version: ObjectVersion | None = None,
) -> str:
    """See the module docstring: file metadata and a URL's version only (no pixel is read), so it is cheap to compare.
    ``version``: the image's (:func:`~pipeline.raster.object_version.object_version`); None: asked here."""
    from pipeline.volume.made_with import input_fingerprint

    def fingerprint(path: str | Path | None) -> str:
        if path is None:
            return ""
        return input_fingerprint(Path(path)) if is_local_path(path) else ""

    version = object_version(image) if version is None else version
    if not version.reusable:  # a URL whose server gives no version: never the same input twice
        return ""
    record = {
        "input": version.text() if version.known else fingerprint(image),  # the digests of local and unasked inputs stay as they were
        "regions": fingerprint(regions),
        "region_field": region_field or "",
        "bands": [int(b) for b in bands] if bands is not None else None,
    }
    if region_layer is not None:  # absent otherwise: the digests of entries made before stay valid
        record["region_layer"] = region_layer
    sources = mosaic_sources(image)
    if sources:  # a VRT mosaic's tiles (absent for other inputs: their digests stay as they were)
        record["sources"] = [fingerprint(f) for f in sources]
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
