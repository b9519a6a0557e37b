"""Argument types shared by the ``segpipe`` subcommands."""

from __future__ import annotations

import argparse
import re

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r} (use auto, cpu, cuda or cuda:N)")
    return text


def positive_int(text: str) -> int:
    """A whole number >= 1 (``--epochs``, ``--batch``, ``--steps``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def fraction(text: str) -> float:
    """A number in ``[0, 1)`` (``--val-fraction``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (``--lr``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value
