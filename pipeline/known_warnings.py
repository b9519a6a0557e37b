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


def _install() -> None:
    warnings.filterwarnings("ignore", message=_CONSOLIDATED, category=UserWarning)
    with contextlib.suppress(ImportError):  # an older zarr: no such warning
        from zarr.errors import UnstableSpecificationWarning

        warnings.filterwarnings("ignore", category=UnstableSpecificationWarning)
    try:
        from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning
    except ImportError:  # a volume-only installation: no raster warnings to silence
        return
    warnings.filterwarnings("ignore", category=NodataShadowWarning)
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def ignore_known_warnings() -> None:
    """Silence the known warnings for the whole process (the CLI and the flows call this at start)."""
    _install()


@contextlib.contextmanager
def known_warnings_ignored() -> Iterator[None]:
    """The known warnings silenced inside the block (library code; see the module docstring on threads)."""
    with warnings.catch_warnings():
        _install()
        yield
