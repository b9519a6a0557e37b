"""Argument types shared by the ``segpipe`` subcommands."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r} (use auto, cpu, cuda or cuda:N)")
    return text


def positive_int(text: str) -> int:
    """A whole number >= 1 (``--epochs``, ``--batch``, ``--steps``)."""
    return _checked(text, int, "a whole number", lambda v: v >= 1, "is not >= 1")


def fraction(text: str) -> float:
    """A number in ``[0, 1)`` (``--val-fraction``)."""
    return _checked(text, float, "a number", lambda v: 0.0 <= v < 1.0, "is not in [0, 1)")


def positive_float(text: str) -> float:
    """A number > 0 (``--lr``)."""
    return _checked(text, float, "a number", lambda v: v > 0, "is not > 0")


def _checked(text: str, convert: Callable[[str], T], noun: str, ok: Callable[[T], bool], problem: str) -> T:
    """``convert(text)`` when it parses and passes ``ok``, else argparse's error naming the value."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} {problem}")
    return value
