"""Model specs, the architecture registry, checkpoint loading, normalisation and training.

Public API (torch-dependent names load on first use, so ``import models.spec`` stays light):

- :mod:`models.spec`: ``ModelSpec``, ``ClassInfo``, ``Normalize``, ``load_spec``, ``spec_from_dict``
- :mod:`models.registry`: ``ARCHITECTURES``, ``register``, ``build_network``
- :mod:`models.checkpoint`: ``load_model``, ``load_state_dict_file``, ``apply_state_dict``, ``save_state_dict``
- :mod:`models.probe`: ``probe_network``, ``check_logits`` (the load-time forward check)
- :mod:`models.normalize`: ``normalizer``, ``foreground_stats``, ``NormStats``
- :mod:`models.train`: ``train`` (import it from there: ``models.train`` is the module), ``TrainConfig``, ``TrainResult``, ``TrainProgress``
  (training pairs are read and checked by :mod:`models.train_data`: ``load_pair``, ``Sample``, ``IGNORE``)
- :mod:`models.catalog`: ``list_catalog``, ``CatalogEntry``
"""

from __future__ import annotations

import importlib
from typing import Any

from models.spec import ClassInfo, ModelSpec, Normalize, load_spec, spec_from_dict

_LAZY = {
    "ARCHITECTURES": "models.registry",
    "register": "models.registry",
    "build_network": "models.registry",
    "load_model": "models.checkpoint",
    "load_state_dict_file": "models.checkpoint",
    "apply_state_dict": "models.checkpoint",
    "save_state_dict": "models.checkpoint",
    "probe_network": "models.probe",
    "check_logits": "models.probe",
    "normalizer": "models.normalize",
    "foreground_stats": "models.normalize",
    "NormStats": "models.normalize",
    "TrainConfig": "models.train",
    "TrainResult": "models.train",
    "TrainProgress": "models.train",
    "list_catalog": "models.catalog",
    "CatalogEntry": "models.catalog",
}

__all__ = ["ClassInfo", "ModelSpec", "Normalize", "load_spec", "spec_from_dict", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
