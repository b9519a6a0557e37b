"""The ``segpipe`` command line. Each subcommand lives in its own module with a ``register(subparsers)``.

Only this layer prints and exits; library code raises :class:`pipeline.errors.SegpipeError`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import SegpipeError
from pipeline.known_warnings import ignore_known_warnings
from pipeline.memory import limit_malloc_arenas

# module path of each subcommand's ``register`` function, in the order ``--help`` lists them
COMMANDS = (
    "pipeline.demo.command",
    "pipeline.raster.command",
    "pipeline.volume.command",
    "models.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe",
        description="Segment gigapixel rasters and CT/MRI volumes into label maps and statistics.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    for command in subparsers.choices.values():  # `segpipe raster ... -v` works as well as `segpipe -v raster ...`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    limit_malloc_arenas()
    ignore_known_warnings()  # before any threads: see pipeline/known_warnings.py
    try:
        return int(args.func(args) or 0)
    except SegpipeError as exc:
        print(f"segpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
