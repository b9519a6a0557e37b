"""``segpipe demo``: placeholder until the demo lands."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job on embedded synthetic data")
    p.add_argument("--out", default="segpipe-demo", help="output folder (default: ./segpipe-demo)")
    p.set_defaults(func=lambda args: 0)
