"""The command line's argument handling shared by the subcommands."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser, parse_args


def test_inputs_after_options_are_inputs_in_order():
    args = parse_args(build_parser(), ["raster", "a.tif", "--model", "m", "--out", "o", "--regions", "r.gpkg", "b.tif", "c.tif"])
    assert args.images == ["a.tif", "b.tif", "c.tif"] and str(args.regions) == "r.gpkg" and str(args.out) == "o"
    args = parse_args(build_parser(), ["volume", "a.nii.gz", "--model", "m", "--out", "o", "b"])
    assert args.inputs == [Path("a.nii.gz"), Path("b")]


def test_unknown_options_are_still_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_parser(), ["raster", "a.tif", "--model", "m", "--out", "o", "--bogus", "b.tif"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
