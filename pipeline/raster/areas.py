"""True ellipsoidal pixel areas (square metres) for a raster window in any CRS.

- Geographic CRS, north-up grid: the exact area of each cell on the ellipsoid, from the authalic
  latitude closed form ``A = a^2 / 2 * dlon * |q(phi1) - q(phi2)|`` (Snyder 1987, eq. 3-12),
  constant along a row. A rotated geographic grid uses the ellipsoid's areal element
  ``M N cos(phi) dphi dlon`` at the pixel centre.
- Projected equal-area CRS (areal scale 1 everywhere): the constant ``|a e - b d|`` in m^2.
- Any other projected CRS: ``|a e - b d| / k`` with ``k`` the areal scale factor at the pixel
  centre, evaluated on a coarse grid of pixel centres and interpolated bilinearly (the factor is
  smooth; see :func:`_sample_step`). ``k = |det J| / (M N cos(phi))``: ``J`` is the Jacobian of
  the map (lon, lat) -> (x, y) taken by central differences through PROJ, ``M N cos(phi)`` the
  area element of the CRS's own datum ellipsoid. This equals PROJ's
  ``Proj.get_factors(...).areal_scale`` for ellipsoidal projections, and stays right where PROJ
  projects on a sphere but the datum is an ellipsoid: for EPSG:3857 (spherical Web Mercator on
  WGS 84 coordinates) ``get_factors`` is off by up to ~0.5 % in area.

Pure functions of ``(crs, transform, rows, cols)``; no I/O.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer

SAMPLE_SPACING_M = 5_000.0
EQUAL_AREA_TOL = 1e-7  # finite differences resolve the scale to ~1e-10


def pixel_area_m2(crs: Any, transform: Affine, rows: slice, cols: slice) -> np.ndarray:
    """Area of every pixel of a window, in square metres on the CRS's ellipsoid.

    Args:
        crs: anything pyproj accepts (rasterio ``CRS``, pyproj ``CRS``, WKT, ``"EPSG:4326"``).
        transform: the raster's affine transform, pixel (col, row) -> CRS (x, y) at pixel corners.
        rows, cols: the window as pixel index slices with explicit ``start`` and ``stop``.

    Returns:
        ``float64`` array of shape ``(rows, cols)`` (Y, X).
    """
    r0, r1, c0, c1 = _bounds(rows, cols)
    shape = (r1 - r0, c1 - c0)
    if 0 in shape:
        return np.zeros(shape)
    key = _crs_key(crs)
    kind = _crs_kind(key)
    t = Affine(*list(transform)[:6])
    if kind == "geographic":
        return _geographic_areas(key, t, r0, r1, c0, c1)
    unit = _unit_factor(key)
    cell = abs(t.a * t.e - t.b * t.d) * unit * unit
    if kind == "equal_area":
        return np.full(shape, cell)
    scale = _areal_scale(key, t, r0, r1, c0, c1)
    return np.divide(cell, scale, out=scale)


def _bounds(rows: slice, cols: slice) -> tuple[int, int, int, int]:
    if rows.start is None or rows.stop is None or cols.start is None or cols.stop is None:
        raise ValueError("pixel_area_m2 needs explicit slice starts and stops, e.g. slice(0, 512)")
    if (rows.step or 1) != 1 or (cols.step or 1) != 1:
        raise ValueError("pixel_area_m2 supports unit-step slices only")
    return int(rows.start), int(rows.stop), int(cols.start), int(cols.stop)


def _crs_key(crs: Any) -> str:
    if isinstance(crs, str):
        return ProjCRS.from_user_input(crs).to_wkt()
    return ProjCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs).to_wkt()


@lru_cache(maxsize=64)
def _pyproj(key: str) -> ProjCRS:
    return ProjCRS.from_wkt(key)


@lru_cache(maxsize=64)
def _crs_kind(key: str) -> str:
    """``geographic``, ``equal_area`` (projected, areal scale 1 across its area of use) or ``projected``."""
    crs = _pyproj(key)
    if crs.is_geographic:
        return "geographic"
    if not crs.is_projected:
        raise ValueError(f"CRS {crs.name!r} is neither geographic nor projected; pixel areas are undefined")
    area = crs.area_of_use
    w, s, e, n = (area.west, area.south, area.east, area.north) if area else (-180.0, -80.0, 180.0, 80.0)
    if e < w:  # crosses the antimeridian
        e += 360.0
    lon, lat = np.meshgrid(np.linspace(w, e, 7), np.linspace(max(s, -85.0), min(n, 85.0), 7))
    lon = (lon + 180.0) % 360.0 - 180.0
    with np.errstate(all="ignore"):
        scale = _scale_at_lonlat(key, lon.ravel(), lat.ravel())
    scale = scale[np.isfinite(scale)]
    if scale.size and np.all(np.abs(scale - 1.0) < EQUAL_AREA_TOL):
        return "equal_area"
    return "projected"


@lru_cache(maxsize=64)
def _unit_factor(key: str) -> float:
    """Metres (projected) or radians (geographic) per CRS unit of the first axis."""
    return float(_pyproj(key).axis_info[0].unit_conversion_factor)


@lru_cache(maxsize=64)
def _ellipsoid(key: str) -> tuple[float, float]:
    """Semi-major axis (m) and first eccentricity squared of the CRS's ellipsoid."""
    ell = _pyproj(key).ellipsoid
    a = float(ell.semi_major_metre)
    b = float(ell.semi_minor_metre)
    return a, 1.0 - (b * b) / (a * a)


def _authalic_q(phi: np.ndarray, e2: float) -> np.ndarray:
    """Snyder's ``q(phi)`` (eq. 3-12); the zone area from the equator to ``phi`` is ``pi a^2 q``."""
    s = np.sin(phi)
    if e2 == 0.0:
        return 2.0 * s
    e = math.sqrt(e2)
    return (1.0 - e2) * (s / (1.0 - e2 * s * s) - (1.0 / (2.0 * e)) * np.log((1.0 - e * s) / (1.0 + e * s)))


def _geographic_areas(key: str, t: Affine, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    a, e2 = _ellipsoid(key)
    to_rad = _unit_factor(key)
    if t.b == 0 and t.d == 0:
        edges = np.clip((t.f + t.e * np.arange(r0, r1 + 1)) * to_rad, -math.pi / 2, math.pi / 2)
        q = _authalic_q(edges, e2)
        dlon = abs(t.a) * to_rad
        row_area = 0.5 * a * a * dlon * np.abs(np.diff(q))
        return np.repeat(row_area[:, None], c1 - c0, axis=1)
    cc, rr = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
    phi = (t.d * cc + t.e * rr + t.f) * to_rad
    s2 = np.sin(phi) ** 2
    mn = a * a * (1.0 - e2) / (1.0 - e2 * s2) ** 2  # meridional x prime-vertical radius
    return np.abs(t.a * t.e - t.b * t.d) * to_rad * to_rad * mn * np.cos(phi)


def is_geographic(crs: Any) -> bool:
    """Whether ``crs`` is geographic (longitude/latitude)."""
    return _crs_kind(_crs_key(crs)) == "geographic"


# longest edge (0.001 degree, ~110 m) of a shape mapped to equal-area coordinates by geographic_polygon_areas:
# cut pixels of 0.1 to 0.5 degrees then add up to a region's pyproj.Geod area within 1e-8 (tests/raster/test_acc_geographic_cut_pixels.py)
EQUAL_AREA_STEP_RAD = math.radians(0.001)


def geographic_polygon_areas(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Ellipsoidal areas (m^2) of (Multi)Polygons given in a geographic ``crs``, edges straight in lon/lat.

    Each shape is densified and mapped to ``(lambda, q(phi))`` (Lambert's cylindrical equal-area map on
    the CRS's ellipsoid; Snyder 1987, eq. 3-12), where its planar area times ``a^2 / 2`` is its area on
    the ellipsoid. Lines of constant longitude or latitude stay straight there; other lines bend, which
    the densification follows.
    """
    import shapely

    key = _crs_key(crs)
    a, e2 = _ellipsoid(key)
    to_rad = _unit_factor(key)

    def to_equal_area(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([xy[:, 0] * to_rad, _authalic_q(np.clip(xy[:, 1] * to_rad, -math.pi / 2, math.pi / 2), e2)])

    dense = shapely.segmentize(geoms, EQUAL_AREA_STEP_RAD / to_rad)
    return shapely.area(shapely.transform(dense, to_equal_area)) * (0.5 * a * a)


def _sample_step(t: Affine, unit: float) -> int:
    """Pixels between areal-scale samples: about 5 km on the ground, 1 to 64 pixels.

    The scale's curvature is about ``1 / R^2`` (R the Earth's radius), so bilinear interpolation
    over ``h`` metres errs by about ``h^2 / (8 R^2)``: ~1e-7 for 5 km.
    """
    pixel_m = math.hypot(t.a, t.d) * unit
    return int(min(64, max(1, SAMPLE_SPACING_M // max(pixel_m, 1e-9))))


def _sample_axis(start: int, stop: int, step: int) -> np.ndarray:
    """Sample indices on the global lattice ``k * step`` that bracket ``start .. stop - 1``, so a
    window of a raster gets exactly the values the whole raster gets (blocks change nothing)."""
    first = (start // step) * step
    last = -(-(stop - 1) // step) * step
    return np.arange(first, last + 1, step)


def _areal_scale(key: str, t: Affine, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    step = _sample_step(t, _unit_factor(key))
    rs = _sample_axis(r0, r1, step)
    cs = _sample_axis(c0, c1, step)
    cc, rr = np.meshgrid(cs + 0.5, rs + 0.5)
    x, y = t @ (cc, rr)
    lon, lat = _transformers(key)[0].transform(x, y)
    coarse = _scale_at_lonlat(key, np.asarray(lon), np.asarray(lat)).reshape(cc.shape)
    if not np.all(np.isfinite(coarse)):
        raise ValueError("areal scale undefined for part of this raster window (outside the projection's domain)")
    if step == 1:
        return coarse
    return _bilinear(coarse, rs, cs, np.arange(r0, r1), np.arange(c0, c1))


FD_STEP_RAD = 2e-6  # central-difference step (~13 m): truncation ~1e-12, rounding ~1e-10 relative


def _scale_at_lonlat(key: str, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Areal scale ``k`` (projected m^2 per ellipsoid m^2) at geodetic lon/lat in the geodetic CRS's units."""
    _, fwd, geo_unit = _transformers(key)
    h = FD_STEP_RAD / geo_unit
    half_turn = math.pi / geo_unit
    lon = np.clip(lon, -half_turn + h, half_turn - h)  # keep the stencil off the antimeridian (<= 13 m shift)
    x_e, y_e = fwd.transform(lon + h, lat)
    x_w, y_w = fwd.transform(lon - h, lat)
    x_n, y_n = fwd.transform(lon, lat + h)
    x_s, y_s = fwd.transform(lon, lat - h)
    unit = _unit_factor(key)
    two_h = 2.0 * FD_STEP_RAD
    dx_dlam = (np.asarray(x_e) - x_w) * unit / two_h
    dy_dlam = (np.asarray(y_e) - y_w) * unit / two_h
    dx_dphi = (np.asarray(x_n) - x_s) * unit / two_h
    dy_dphi = (np.asarray(y_n) - y_s) * unit / two_h
    a, e2 = _ellipsoid(key)
    phi = np.asarray(lat) * geo_unit
    s2 = np.sin(phi) ** 2
    element = a * a * (1.0 - e2) / (1.0 - e2 * s2) ** 2 * np.cos(phi)  # M N cos(phi), m^2 per rad^2
    return np.abs(dx_dlam * dy_dphi - dx_dphi * dy_dlam) / element


@lru_cache(maxsize=64)
def _transformers(key: str) -> tuple[Transformer, Transformer, float]:
    """(projected -> geodetic, geodetic -> projected, radians per geodetic unit), all in x/y = lon/lat order."""
    crs = _pyproj(key)
    geo = crs.geodetic_crs
    return (
        Transformer.from_crs(crs, geo, always_xy=True),
        Transformer.from_crs(geo, crs, always_xy=True),
        float(geo.axis_info[0].unit_conversion_factor),
    )


def _bilinear(coarse: np.ndarray, rs: np.ndarray, cs: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Separable linear interpolation of ``coarse`` (sampled at ``rs`` x ``cs``) onto ``rows`` x ``cols``."""
    along_cols = np.stack([np.interp(cols, cs, line) for line in coarse])  # (len(rs), len(cols))
    if len(rs) == 1:
        return np.repeat(along_cols, len(rows), axis=0)
    i = np.clip(np.searchsorted(rs, rows, side="right") - 1, 0, len(rs) - 2)
    w = (rows - rs[i]) / (rs[i + 1] - rs[i])
    # row by row of the coarse lattice: lo + w * (hi - lo), written in place (two passes over the
    # output, no full-size temporaries; the areas of a 1024^2 block took 8 ms, most of it here)
    out = np.empty((len(rows), len(cols)))
    for k in np.unique(i):
        band = np.flatnonzero(i == k)
        lo, hi = along_cols[k], along_cols[k + 1]
        part = out[band[0] : band[-1] + 1]
        np.multiply(w[band, None], hi - lo, out=part)
        part += lo
    return out
