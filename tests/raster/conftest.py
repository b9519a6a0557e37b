"""Shared fixtures for the raster tests: real sample data (skipped when absent) and tiny real GeoTIFFs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

GEO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "geo"
LANDSAT = GEO / "landsat7_bahamas_rgb.tif"
NAIP = GEO / "naip_north_dakota_rgbn.tif"
BAHAMAS = GEO / "bahamas_country.geojson"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"sample data {path.name} not found under ../shared/data/geo (fresh clone without shared data)")
    return path


@pytest.fixture
def landsat() -> Path:
    return _need(LANDSAT)


@pytest.fixture
def naip() -> Path:
    return _need(NAIP)


@pytest.fixture
def bahamas() -> Path:
    return _need(BAHAMAS)


def write_geotiff(path: Path, data: np.ndarray, *, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 6000000), nodata=None, descriptions=None, **extra) -> Path:
    """Write a small real GeoTIFF with ``data`` shaped (C, Y, X)."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype.name, transform=transform, nodata=nodata, **extra)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or (), start=1):
            dst.set_band_description(i, d)
    return path


@pytest.fixture
def make_geotiff():
    return write_geotiff


# --- a small COG layout checker (the rules of GDAL's validate_cloud_optimized_geotiff.py) ---

_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def _read_ifds(path: Path) -> list[dict[int, list[int]]]:
    raw = Path(path).read_bytes()
    order = {b"II": "<", b"MM": ">"}[raw[:2]]
    big = struct.unpack(order + "H", raw[2:4])[0] == 43
    offset = struct.unpack(order + ("Q" if big else "I"), raw[8:16] if big else raw[4:8])[0]
    ifds = []
    while offset:
        count_fmt, count_size, entry_size = ("Q", 8, 20) if big else ("H", 2, 12)
        n = struct.unpack(order + count_fmt, raw[offset : offset + count_size])[0]
        tags: dict[int, list[int]] = {"_offset": offset}  # type: ignore[dict-item]
        for i in range(n):
            e = offset + count_size + i * entry_size
            tag, typ = struct.unpack(order + "HH", raw[e : e + 4])
            cnt = struct.unpack(order + ("Q" if big else "I"), raw[e + 4 : e + (12 if big else 8)])[0]
            if typ not in _TYPES:
                continue
            fmt, size = _TYPES[typ]
            inline = 8 if big else 4
            field = raw[e + (12 if big else 8) : e + entry_size]
            if cnt * size <= inline:
                data = field
            else:
                at = struct.unpack(order + ("Q" if big else "I"), field[: 8 if big else 4])[0]
                data = raw[at : at + cnt * size]
            tags[tag] = list(struct.unpack(order + fmt * cnt, data[: cnt * size]))
        next_at = offset + count_size + n * entry_size
        offset = struct.unpack(order + ("Q" if big else "I"), raw[next_at : next_at + (8 if big else 4)])[0]
        ifds.append(tags)
    return ifds


def check_cog_layout(path: Path) -> list[dict[int, list[int]]]:
    """Assert COG rules: tiled, all IFDs before the tile data, overviews after the main IFD in
    decreasing size, and overview data stored smallest first before the full-resolution data."""
    ifds = _read_ifds(path)
    assert ifds, "no IFD"
    for ifd in ifds:
        assert 322 in ifd and 324 in ifd, "not tiled (TileWidth/TileOffsets missing)"
    first_data = min(min(o for o in ifd[324] if o) for ifd in ifds)
    assert max(ifd["_offset"] for ifd in ifds) < first_data, "an IFD comes after tile data"
    widths = [ifd[256][0] for ifd in ifds]
    assert widths == sorted(widths, reverse=True), f"IFDs not in decreasing size: {widths}"
    starts = [min(o for o in ifd[324] if o) for ifd in ifds]
    assert starts == sorted(starts, reverse=True), "overview data not stored smallest first"
    return ifds


@pytest.fixture
def cog_layout():
    return check_cog_layout
