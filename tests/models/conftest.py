"""Shared helpers for the models tests: small specs built in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.spec import ModelSpec, spec_from_dict


def make_spec(
    architecture: str = "unet",
    task: str = "raster",
    window: list[int] | None = None,
    *,
    in_channels: int = 2,
    n_classes: int = 3,
    params: dict[str, Any] | None = None,
    source: Path | None = None,
    **extra: Any,
) -> ModelSpec:
    """A valid spec; class ids are 0, 10, 20, ... so index and id differ."""
    raw = {
        "name": f"test-{architecture}",
        "task": task,
        "architecture": architecture,
        "in_channels": in_channels,
        "window": window or ([32, 32] if task == "raster" else [16, 16, 16]),
        "classes": [{"id": 10 * i, "name": f"class{i}"} for i in range(n_classes)],
        "params": params or {},
        **extra,
    }
    return spec_from_dict(raw, source=source)


@pytest.fixture
def spec_factory():
    return make_spec
