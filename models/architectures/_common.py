"""Helpers shared by the builders: parameter checking and window checks, with errors naming the spec."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from models.spec import ModelSpec, Task
from pipeline.errors import ModelSpecError


def where(spec: ModelSpec) -> str | Path:
    """What an error about ``spec`` should name: its YAML file, else its name."""
    return spec.source or spec.name


def resolve_params(spec: ModelSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``spec.params`` over ``defaults``; an unknown key is an error listing the known ones.

    YAML lists stay lists; builders convert what their library needs.
    """
    unknown = sorted(set(spec.params) - set(defaults))
    if unknown:
        raise ModelSpecError(
            where(spec),
            f"unknown params {unknown} for architecture '{spec.architecture}'",
            f"known params: {', '.join(sorted(defaults))}",
        )
    return {**defaults, **spec.params}


def require_task(spec: ModelSpec, allowed: tuple[Task, ...], fix: str) -> None:
    """Refuse a spec whose task the architecture does not support."""
    if spec.task not in allowed:
        raise ModelSpecError(where(spec), f"architecture '{spec.architecture}' does not support task '{spec.task}'", fix)


def require_divisible(spec: ModelSpec, factor: int, why: str) -> None:
    """Refuse a window whose sizes are not all multiples of ``factor`` (the network's total downsampling)."""
    bad = [w for w in spec.window if w % factor]
    if bad:
        good = [max(factor, factor * round(w / factor)) for w in spec.window]
        raise ModelSpecError(
            where(spec),
            f"window {list(spec.window)} is not divisible by {factor} ({why}) for architecture '{spec.architecture}'",
            f"use a window of multiples of {factor}, e.g. {good}",
        )


def construct(spec: ModelSpec, factory: Callable[..., torch.nn.Module], **kwargs: Any) -> torch.nn.Module:
    """Call a library constructor, turning its argument errors into a :class:`ModelSpecError`."""
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelSpecError(
            where(spec), f"invalid params for architecture '{spec.architecture}': {exc}", "fix params in the model spec"
        ) from exc


def as_layer_arg(value: Any) -> Any:
    """YAML gives ``[name, {options}]`` for MONAI ``act``/``norm`` arguments; MONAI wants a tuple."""
    return tuple(value) if isinstance(value, list) else value


def total_stride(strides: Any) -> int:
    """Product of per-level strides (ints or per-axis sequences; the largest axis stride counts)."""
    return math.prod(max(s) if isinstance(s, (list, tuple)) else int(s) for s in strides)
