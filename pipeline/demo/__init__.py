"""``segpipe demo``: synthetic inputs with known truth, run through the real pipelines and scored.

Public API (imported lazily, so that ``segpipe`` starts fast):

- :func:`synthetic_scene`, :func:`write_scene_geotiff`, :func:`write_regions_geojson` (:mod:`.scene`)
- :func:`synthetic_ct`, :func:`write_ct_nifti` (:mod:`.phantom`)
- :func:`run_demo` -> :class:`DemoResult` (:mod:`.run`)
- :func:`confusion_matrix`, :func:`iou_per_class`, :func:`dice_per_class` (:mod:`.metrics`)
- :func:`train_demo_model` (:mod:`.train`; ``python -m pipeline.demo.train`` rebuilds the checkpoints)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "synthetic_scene": "scene", "write_scene_geotiff": "scene", "write_regions_geojson": "scene",
    "synthetic_ct": "phantom", "write_ct_nifti": "phantom",
    "run_demo": "run", "DemoResult": "run", "LandcoverDemo": "run", "CtDemo": "run",
    "confusion_matrix": "metrics", "iou_per_class": "metrics", "dice_per_class": "metrics",
    "train_demo_model": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
