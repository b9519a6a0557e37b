"""Library warnings segpipe expects and deals with itself, silenced in one place.

- zarr: "Consolidated metadata is currently not part in the Zarr format 3 specification"; the
  statistics and work stores are written consolidated on purpose (``xr.open_zarr`` opens them
  without listing every array), and read back by segpipe and xarray alike.
- zarr ``UnstableSpecificationWarning``: the statistics stores keep strings as fixed-width
  unicode (``<U``; :mod:`pipeline.stats_store` says why), a zarr-python type without a v3
  specification yet.
- rasterio ``NodataShadowWarning``: a 4-band image may tag its last band alpha next to a nodata
  value; GDAL (rightly) takes the masks from nodata and rasterio warns on every read.
- rasterio ``NotGeoreferencedWarning``: a raster without georeferencing is refused with segpipe's
  own message (:mod:`pipeline.raster.probe`).

``warnings.catch_warnings`` swaps the process's filter list and puts the saved one back on exit,
which is not thread-safe (Python < 3.14): two scenes in flight, each entering and leaving it on
its own thread, can leave one thread's temporary filters behind or drop them. So the edges (CLI,
flows) install these filters once with :func:`ignore_known_warnings`, before any threads; the
library's :func:`known_warnings_ignored` blocks then only ever restore lists that hold them already.
Library callers on one thread get the same silence from the blocks alone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

_CONSOLIDATED = ".*[Cc]onsolidated metadata.*"


def _install() -> int:
    """Put the known warnings' ignore filters at the front of the current filter list; return how many.

    The warning classes are imported first: importing zarr adds a filter of its own (numcodecs'
    crc32c deprecation), which must not land between ours."""
    categories: list[type[Warning]] = []
    with contextlib.suppress(ImportError):  # an older zarr: no such warning
        from zarr.errors import UnstableSpecificationWarning

        categories.append(UnstableSpecificationWarning)
    with contextlib.suppress(ImportError):  # a volume-only installation: no raster warnings to silence
        from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning

        categories += [NodataShadowWarning, NotGeoreferencedWarning]
    warnings.filterwarnings("ignore", message=_CONSOLIDATED, category=UserWarning)
    for category in categories:
        warnings.filterwarnings("ignore", category=category)
    return 1 + len(categories)


_EDGE: list[tuple] = []
"""The filters :func:`ignore_known_warnings` put at the front of the process's list (empty before)."""


def ignore_known_warnings() -> None:
    """Silence the known warnings for the whole process (the CLI and the flows call this at start)."""
    count = _install()
    _EDGE[:] = warnings.filters[:count]


@contextlib.contextmanager
def known_warnings_ignored() -> Iterator[None]:
    """The known warnings silenced inside the block (library code; see the module docstring on threads).

    Where the edge's filters still lead the list, the block changes no list: ``filterwarnings``
    removes and re-inserts an entry by two lookups of the module's current list, so a thread
    entering its block while another swapped lists could take an edge filter out of the list that
    is put back last (a consolidated-metadata warning then escaped under ``-W error``, rarely).
    """
    with warnings.catch_warnings():
        if not _EDGE or warnings.filters[: len(_EDGE)] != _EDGE:
            _install()
        yield
