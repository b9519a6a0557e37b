"""Land-cover rasters: ingest to zarr, segment, write label COGs, area statistics per region and class.

Public API (imported lazily, so ``segpipe --help`` stays fast)::

    probe_raster, RasterInfo                                 # pipeline.raster.probe
    ingest_raster, read_info                                 # pipeline.raster.ingest
    write_label_cog                                          # pipeline.raster.cog
    pixel_area_m2                                            # pipeline.raster.areas
    read_regions, scene_region, Regions                      # pipeline.raster.regions
    compute_stats, append_stats, area_over_time, plot_area_over_time   # pipeline.raster.stats
    write_quicklook                                          # pipeline.raster.quicklook
    segment_raster, RasterResult                             # pipeline.raster.run
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RasterInfo": "probe", "probe_raster": "probe",
    "ingest_raster": "ingest", "read_info": "ingest",
    "write_label_cog": "cog",
    "pixel_area_m2": "areas",
    "Regions": "regions", "read_regions": "regions", "scene_region": "regions",
    "compute_stats": "stats", "append_stats": "stats", "area_over_time": "stats", "plot_area_over_time": "stats",
    "write_quicklook": "quicklook",
    "RasterResult": "run", "segment_raster": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pipeline.raster.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pipeline.raster' has no attribute {name!r}")
