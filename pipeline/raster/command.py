"""``segpipe raster``: placeholder until the raster path lands."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("raster", help="segment GeoTIFF/COG rasters")
    p.set_defaults(func=lambda args: 0)
