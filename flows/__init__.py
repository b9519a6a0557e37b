"""Prefect flows: thin wiring over ``pipeline`` and ``models``.

- :func:`flows.landcover.landcover` (flow ``landcover``): scenes -> label COGs + area per region and class.
- :func:`flows.volumes.segment_volumes` (flow ``segment-volumes``): CT/MRI studies -> label volumes + volumes (mL).

Deployments of both are defined in ``deploy/prefect.yaml``; catalogs are described in :mod:`flows.catalog`.
Names load lazily, so ``import flows`` does not import Prefect.
"""

from __future__ import annotations

from typing import Any

__all__ = ["landcover", "segment_volumes"]


def __getattr__(name: str) -> Any:
    if name == "landcover":
        from flows.landcover import landcover

        return landcover
    if name == "segment_volumes":
        from flows.volumes import segment_volumes

        return segment_volumes
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
