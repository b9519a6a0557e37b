"""``segpipe volume``: placeholder until the volume path lands."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("volume", help="segment NIfTI volumes and DICOM series")
    p.set_defaults(func=lambda args: 0)
