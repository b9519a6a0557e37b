"""Typed readers for the values of a model spec mapping, each raising :class:`ModelSpecError` that names
the spec file, the key, the bad value and the fix (instead of a bare ``int()``/``float()`` traceback)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.errors import ModelSpecError

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def check_keys(raw: Mapping[Any, Any], known: Iterable[str], where: Any, what: str, fix: str) -> None:
    """Refuse keys of ``raw`` outside ``known``, suggesting the closest known key (a typo is the usual cause).

    Args:
        raw: the mapping read from YAML.
        known: the keys it may hold.
        where: the spec file (or name) for the message.
        what: where the mapping sits, e.g. ``"the model spec"``, ``"normalize (kind: scale)"``.
        fix: what the user can do when no close match is found.
    """
    known = list(known)
    for key in raw:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else fix
        raise ModelSpecError(where, f"unknown key '{key}' in {what}", f"{hint} Known keys: {', '.join(known)}")


def integer(value: Any, key: str, where: Any, fix: str) -> int:
    """``value`` as an int: ints and integral floats (``64.0``); booleans, strings, ``64.7`` are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ModelSpecError(where, f"{key} must be an integer, got {value!r}", fix)
    return int(value)


def number(value: Any, key: str, where: Any, fix: str) -> float:
    """``value`` as a finite float (ints accepted; booleans and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelSpecError(where, f"{key} must be a number, got {value!r}", fix)
    return float(value)


def number_list(value: Any, key: str, where: Any, fix: str) -> tuple[float, ...]:
    """A YAML list of numbers as a tuple of floats; a scalar or a string is refused."""
    if not isinstance(value, (list, tuple)):
        raise ModelSpecError(where, f"{key} must be a list of numbers, got {value!r}", fix)
    return tuple(number(v, key, where, fix) for v in value)


def text(value: Any, key: str, where: Any, fix: str) -> str:
    """A non-empty string (YAML numbers are accepted and turned into text; mappings, lists, null are refused)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise ModelSpecError(where, f"{key} must be a non-empty string, got {value!r}", fix)
    return str(value)


def color(value: Any, key: str, where: Any) -> str:
    """A class colour as ``#rrggbb``: hex strings are kept as written; other names matplotlib knows
    (``red``, ``tab:blue``, ``#abc``) are converted; anything else is refused."""
    fix = "give '#rrggbb' (e.g. '#1f78b4') or a colour name such as red"
    if not isinstance(value, str):
        raise ModelSpecError(where, f"{key} {value!r} is not a colour", fix)
    if _HEX.match(value):
        return value
    from matplotlib.colors import to_hex

    try:
        return to_hex(value, keep_alpha=False)
    except ValueError as exc:
        raise ModelSpecError(where, f"{key} {value!r} is not a colour", fix) from exc
