"""Architecture registry: name -> builder, plus ``package.module:callable`` import paths.

Builders take the spec and return a ``torch.nn.Module`` mapping ``(N, in_channels, *window)`` to
logits ``(N, n_classes, *window)``. The built-in builders live in :mod:`models.architectures` (one
module each) and register themselves when this module is imported: ``unet``, ``deeplabv3plus``,
``segformer``, ``segresnet``, ``swinunetr`` and ``monai-bundle``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

Builder = Callable[[ModelSpec], torch.nn.Module]

ARCHITECTURES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to :data:`ARCHITECTURES` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        ARCHITECTURES[name] = builder
        return builder

    return wrap


def _import_callable(path: str, where: object) -> Callable[..., torch.nn.Module]:
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelSpecError(where, f"cannot import architecture '{path}': {exc}", "check the 'package.module:callable' path") from exc
    if not callable(obj):
        raise ModelSpecError(where, f"architecture '{path}' is not callable", "point to a class or function returning a torch.nn.Module")
    return obj


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """Build the (untrained) network a spec describes; weights are loaded by :func:`models.checkpoint.load_model`."""
    where = spec.source or spec.name
    if ":" in spec.architecture:
        network = _import_callable(spec.architecture, where)(**spec.params)
    else:
        builder = ARCHITECTURES.get(spec.architecture)
        if builder is None:
            known = ", ".join(sorted(ARCHITECTURES)) or "none"
            raise ModelSpecError(where, f"unknown architecture '{spec.architecture}'", f"known: {known}, or 'package.module:callable'")
        network = builder(spec)
    if not isinstance(network, torch.nn.Module):
        raise ModelSpecError(where, f"architecture '{spec.architecture}' returned {type(network).__name__}, not a torch.nn.Module", "return a torch.nn.Module")
    return network


# Register the built-in architectures. Placed last because they import ``register`` from here; the
# builder modules import only torch at module level (MONAI and transformers load inside the builders).
import models.architectures  # noqa: E402,F401
