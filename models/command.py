"""``segpipe models`` and ``segpipe train``: placeholder until the registry lands."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the model catalog")
    p.set_defaults(func=lambda args: 0)
