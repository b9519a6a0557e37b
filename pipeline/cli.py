"""The ``segpipe`` command line. Each subcommand lives in its own module with a ``register(subparsers)``.

Only this layer prints and exits; library code raises :class:`pipeline.errors.SegpipeError`.
Ctrl-C and SIGTERM stop a run the same way (its cleanup runs; :mod:`pipeline.termination`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import SegpipeError
from pipeline.known_warnings import ignore_known_warnings
from pipeline.memory import limit_malloc_arenas
from pipeline.stop import Stopped, clear_stop
from pipeline.termination import EXIT_STATUS, MESSAGE, Terminated, sigterm_as_interrupt

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


# the subcommands' positional inputs (nargs="+"); inputs given after options are added to them
INPUT_DESTS = ("images", "inputs")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that inputs may also come after options
    (``segpipe raster a.tif --model m --out o b.tif``), as users of ``cp``-style commands expect.

    argparse stops a ``nargs="+"`` positional at the first option and its ``parse_intermixed_args``
    does not work with subcommands, so inputs left over after the options are appended here;
    anything else left over (an unknown option) is argparse's usual error.
    """
    args, extra = parser.parse_known_args(argv)
    dest = next((d for d in INPUT_DESTS if isinstance(getattr(args, d, None), list)), None)
    if extra and dest is not None and not any(e.startswith("-") for e in extra):
        inputs = getattr(args, dest)
        kind = type(inputs[0]) if inputs else str  # the positional's own type (volume: Path)
        inputs.extend(kind(e) for e in extra)
        return args
    return parser.parse_args(argv)  # no leftovers, or argparse's own error for them


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (143 when stopped by SIGTERM, see :mod:`pipeline.termination`)."""
    clear_stop()  # a stop requested before (an earlier main() in this process) is not this run's
    with sigterm_as_interrupt():  # first: a SIGTERM while the subcommands import cleans up too (nothing to clean yet)
        try:
            return _main(argv)
        except (Terminated, Stopped):  # Stopped: a thread that saw the SIGTERM's stop request first
            print(MESSAGE, file=sys.stderr)
            return EXIT_STATUS


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
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
    except (Terminated, Stopped):
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
