"""Reading the YAML files users write (model specs, scene and study catalogs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError


def read_yaml_mapping(path: Path, *, what: str, help_for_keys: str, error: type[InputError] = InputError) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``error`` (naming the file) when it is not valid YAML or not a mapping.

    Args:
        path: the YAML file.
        what: what the file is, for the message ("a model spec", "a catalog").
        help_for_keys: where the user finds the keys, for the fix ("see the model spec in the README").
        error: the :class:`InputError` subclass to raise.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(path, f"not valid YAML: {exc}", "fix the syntax") from exc
    if not isinstance(raw, dict):
        raise error(path, f"{what} must be a YAML mapping", help_for_keys)
    return raw
