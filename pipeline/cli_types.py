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
