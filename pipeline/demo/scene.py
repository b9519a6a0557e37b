"""A synthetic multispectral land-cover scene with its ground truth, and its GeoTIFF/GeoJSON writers.

The scene imitates a 10 m Sentinel-2-like surface-reflectance product (bands B, G, R, NIR, values
scaled by 10,000 as uint16) over a rural/urban landscape:

* fields (class 2): a slightly rotated grid of rectangular parcels, each with its own crop state
  (green crop, ripe crop, bare soil) and faint tillage stripes;
* forest (1): patches with smooth, noisy boundaries and a rough canopy texture;
* urban (3): a block grid of bright, flat roofs of varying brightness, with streets;
* water (0): a meandering river and a lake with a noisy shore;
* roads (4): straight asphalt roads across the scene and the urban street grid.

Pure numpy + ``scipy.ndimage``; deterministic for a given seed; ~0.5 s for 1024 x 1024. Arrays are
``(C, Y, X)`` for the image and ``(Y, X)`` for the truth; row 0 is the northern edge.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

WATER, FOREST, FIELDS, URBAN, ROADS = 0, 1, 2, 3, 4
CLASS_NAMES = ("water", "forest", "fields", "urban", "roads")
BAND_NAMES = ("B", "G", "R", "NIR")

# mean reflectance x 10,000 per band (B, G, R, NIR)
_SPECTRA = {
    WATER: (620, 560, 330, 160),
    FOREST: (280, 480, 270, 2900),
    URBAN: (1500, 1480, 1560, 1850),
    ROADS: (930, 950, 990, 1080),
}
# field parcel states: green crop, ripe/yellow crop, bare soil, grassland
_FIELD_STATES = (
    (420, 780, 440, 4000),
    (760, 1060, 1250, 2600),
    (1000, 1280, 1620, 2150),
    (520, 880, 620, 3300),
)
_NOISE = 0.025  # per-pixel sensor noise, relative


def synthetic_scene(seed: int, size: tuple[int, int] = (1024, 1024)) -> tuple[np.ndarray, np.ndarray]:
    """Generate a synthetic land-cover scene.

    Args:
        seed: random seed; the same seed gives the same scene, bit for bit.
        size: ``(Y, X)`` in pixels (at least 128 each).

    Returns:
        ``(image, truth)``: ``image`` is ``(4, Y, X)`` uint16 surface reflectance x 10,000 in band
        order B, G, R, NIR; ``truth`` is ``(Y, X)`` uint8 class ids 0 water, 1 forest, 2 fields,
        3 urban, 4 roads. Every class is present.
    """
    ny, nx = (int(s) for s in size)
    if ny < 128 or nx < 128:
        raise ValueError(f"scene size {size} too small: give at least (128, 128)")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    image = np.empty((4, ny, nx), np.float32)
    truth = np.full((ny, nx), FIELDS, np.uint8)

    _paint_fields(rng, image, yy, xx)
    forest = _smooth_noise(rng, (ny, nx), 160.0) + 0.25 * _smooth_noise(rng, (ny, nx), 24.0)
    forest_mask = forest > np.quantile(forest, 0.72)
    _paint(image, truth, forest_mask, FOREST, _SPECTRA[FOREST], _canopy_texture(rng, (ny, nx)))
    _paint_urban(rng, image, truth, yy, xx)
    _paint_water(rng, image, truth, yy, xx)
    _paint_roads(rng, image, truth, yy, xx)

    haze = 1.0 + 0.04 * _smooth_noise(rng, (ny, nx), 300.0)
    image *= haze
    image *= 1.0 + _NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 1, 10_000).astype(np.uint16), truth


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise smooth over ``scale`` pixels: a coarse random grid, cubic-spline upsampled.

    The upsampling is separable, done as ``Wy @ coarse @ Wx.T`` with the (n, coarse) interpolation
    matrices, which is ~50x faster than ``ndimage.zoom`` on the full grid.
    """
    coarse = [max(2, math.ceil(s / scale)) + 3 for s in shape]
    low = rng.standard_normal(coarse).astype(np.float32)
    wy, wx = (_upsample_matrix(c, n, scale) for c, n in zip(coarse, shape))
    field = wy @ low @ wx.T
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _upsample_matrix(n_coarse: int, n_out: int, scale: float) -> np.ndarray:
    """``(n_out, n_coarse)`` cubic B-spline weights sampling a coarse grid every ``1 / scale`` cells."""
    full = ndimage.zoom(np.eye(n_coarse, dtype=np.float32), (scale, 1), order=3, prefilter=False, grid_mode=False)
    start = int(scale) // 2
    return full[start:start + n_out]


def _canopy_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Rough crown texture: blurred white noise, about +-15 %."""
    tex = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.2)
    return 1.0 + 0.15 * tex / max(float(tex.std()), 1e-6)


def _paint(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, cls: int, spectrum, texture) -> None:
    """Set class ``cls`` and spectrum x texture where ``mask`` is True."""
    truth[mask] = cls
    tex = texture[mask] if isinstance(texture, np.ndarray) else texture
    for band, value in enumerate(spectrum):
        image[band][mask] = value * tex


def _paint_fields(rng: np.random.Generator, image: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
    """Rotated parcel grid: rows of random height cut into parcels of random width, one state each."""
    angle = rng.uniform(-0.35, 0.35)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    span = float(max(yy.shape) * 1.5)
    row_edges = _cuts(rng, v.min(), v.max() + 1, 50, 140)
    row = np.searchsorted(row_edges, v, side="right")
    parcel_id = np.zeros(yy.shape, np.int64)
    n_rows = len(row_edges) + 1
    col_edges = [_cuts(rng, u.min(), u.min() + span + 1, 50, 180) for _ in range(n_rows)]
    n_cols = max(len(c) for c in col_edges) + 1
    for r in range(n_rows):
        sel = row == r
        parcel_id[sel] = r * n_cols + np.searchsorted(col_edges[r], u[sel], side="right")
    n_parcels = n_rows * n_cols
    states = rng.integers(0, len(_FIELD_STATES), n_parcels)
    gains = rng.uniform(0.85, 1.15, (n_parcels, 4)).astype(np.float32)
    table = np.asarray(_FIELD_STATES, np.float32)[states] * gains  # (parcels, 4)
    stripes = 1.0 + 0.04 * np.sin(u * (2 * math.pi / rng.uniform(5, 9)) + (parcel_id % 7))
    within = 1.0 + 0.04 * _smooth_noise(rng, yy.shape, 30.0)
    for band in range(4):
        image[band] = table[parcel_id, band] * stripes * within
    # hedges/tracks between parcels: darker, greener one-pixel lines, still "fields"
    edge = (ndimage.maximum_filter(parcel_id, 2) != ndimage.minimum_filter(parcel_id, 2)) & (rng.random(yy.shape) < 0.8)
    image[:, edge] *= np.asarray([0.8, 0.9, 0.75, 0.95], np.float32)[:, None]


def _cuts(rng: np.random.Generator, start: float, stop: float, low: int, high: int) -> np.ndarray:
    """Sorted cut positions from ``start`` to ``stop`` with gaps drawn in ``[low, high)``."""
    gaps = rng.integers(low, high, int((stop - start) / low) + 2)
    return start + np.cumsum(gaps)[np.cumsum(gaps) < stop - start].astype(np.float32)


def _paint_urban(rng: np.random.Generator, image, truth, yy, xx) -> None:
    """A town: a rectangle of building blocks separated by a street grid (roads)."""
    ny, nx = truth.shape
    h, w = int(ny * rng.uniform(0.25, 0.35)), int(nx * rng.uniform(0.25, 0.35))
    y0, x0 = int(rng.uniform(0.05, 0.95 - h / ny) * ny), int(rng.uniform(0.05, 0.95 - w / nx) * nx)
    wobble = 12 * _smooth_noise(rng, (ny, nx), 60.0)
    town = (yy >= y0 + wobble) & (yy < y0 + h - wobble) & (xx >= x0 - wobble) & (xx < x0 + w + wobble)
    street_y = y0 + np.cumsum(rng.integers(36, 64, 20))
    street_x = x0 + np.cumsum(rng.integers(36, 64, 20))
    streets = np.isin(np.arange(ny), np.concatenate([s + np.arange(4) for s in street_y]))[:, None] | np.isin(
        np.arange(nx), np.concatenate([s + np.arange(4) for s in street_x])
    )[None, :]
    # roofs: 8-20 px cells of random brightness, a few darker courtyards
    cell = int(rng.integers(8, 14))
    roof_level = rng.uniform(0.75, 1.3, (ny // cell + 1, nx // cell + 1)).astype(np.float32)
    roofs = roof_level[(yy // cell).astype(int), (xx // cell).astype(int)]
    roofs *= 1.0 + 0.05 * rng.standard_normal(roofs.shape, dtype=np.float32)
    _paint(image, truth, town & ~streets, URBAN, _SPECTRA[URBAN], roofs)
    _paint(image, truth, town & streets, ROADS, _SPECTRA[ROADS], 1.0)


def _paint_water(rng: np.random.Generator, image, truth, yy, xx) -> None:
    """A meandering river across the scene and a lake with a noisy shore; turbidity varies smoothly."""
    ny, nx = truth.shape
    vertical = rng.random() < 0.5
    along, across, n_across = (yy, xx, nx) if vertical else (xx, yy, ny)
    n_along = ny if vertical else nx
    phase = rng.uniform(0, 2 * math.pi, 2)
    centre = (
        n_across * rng.uniform(0.3, 0.7)
        + n_across * 0.12 * np.sin(2 * math.pi * along / (n_along * rng.uniform(0.5, 0.8)) + phase[0])
        + n_across * 0.04 * np.sin(2 * math.pi * along / (n_along * rng.uniform(0.15, 0.25)) + phase[1])
    )
    width = rng.uniform(10, 16) * (1 + 0.25 * _smooth_noise(rng, truth.shape, 80.0))
    river = np.abs(across - centre) < width / 2
    cy, cx = rng.uniform(0.2, 0.8) * ny, rng.uniform(0.2, 0.8) * nx
    ry, rx = rng.uniform(0.06, 0.12) * ny, rng.uniform(0.06, 0.12) * nx
    shore = 1.0 + 0.18 * _smooth_noise(rng, truth.shape, 25.0)
    lake = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < shore
    turbidity = 1.0 + 0.12 * _smooth_noise(rng, truth.shape, 120.0)
    _paint(image, truth, river | lake, WATER, _SPECTRA[WATER], turbidity)


def _paint_roads(rng: np.random.Generator, image, truth, yy, xx) -> None:
    """Two or three straight roads crossing the scene (bridges over water included)."""
    ny, nx = truth.shape
    for _ in range(int(rng.integers(2, 4))):
        angle = rng.uniform(0, math.pi)
        py, px = rng.uniform(0.2, 0.8) * ny, rng.uniform(0.2, 0.8) * nx
        dist = np.abs((xx - px) * math.sin(angle) - (yy - py) * math.cos(angle))
        _paint(image, truth, dist < rng.uniform(2.0, 3.0), ROADS, _SPECTRA[ROADS], 1.0)


def scene_transform(origin: tuple[float, float], pixel: float):
    """North-up affine transform with the upper-left corner at ``origin`` ``(x, y)`` in CRS units."""
    from affine import Affine

    return Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])


def write_scene_geotiff(
    path: str | Path,
    image: np.ndarray,
    *,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_000.0, 5_350_000.0),
    pixel: float = 10.0,
    band_names: tuple[str, ...] | None = BAND_NAMES,
) -> Path:
    """Write a ``(C, Y, X)`` array (or a ``(Y, X)`` label map) as a tiled, georeferenced GeoTIFF.

    Args:
        path: output file.
        image: ``(C, Y, X)`` or ``(Y, X)`` array, written with its own dtype.
        crs: any CRS rasterio accepts; default UTM zone 33N (WGS 84).
        origin: ``(x, y)`` of the upper-left pixel corner, CRS units (metres for UTM).
        pixel: pixel size in CRS units (square, north-up).
        band_names: band descriptions (``None`` for none); ``B``, ``G`` and ``R`` also set the
            bands' colour interpretation (blue, green, red) so viewers show true colour.

    Returns:
        The written path.
    """
    import rasterio
    from rasterio.enums import ColorInterp

    interp = {"B": ColorInterp.blue, "G": ColorInterp.green, "R": ColorInterp.red}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image[None] if image.ndim == 2 else image
    profile = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
        "dtype": data.dtype.name, "crs": crs, "transform": scene_transform(origin, pixel),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if band_names and len(band_names) == data.shape[0]:
            for i, name in enumerate(band_names, start=1):
                dst.set_band_description(i, name)
            dst.colorinterp = [interp.get(name, ColorInterp.undefined) for name in band_names]
    return path


def district_polygons(size: tuple[int, int]) -> dict[str, list[tuple[float, float]]]:
    """Three named districts as closed rings of ``(col, row)`` pixel coordinates (fractions of the scene).

    ``Northfield`` covers the northern third, ``Riverside`` a south-western quadrilateral and
    ``Old Town`` a south-eastern pentagon; together they cover most, but not all, of the scene.
    (The names are used by the flows' demo catalogs and tests: keep them.)
    """
    ny, nx = size
    rings = {
        "Northfield": [(0.0, 0.0), (1.0, 0.0), (1.0, 0.33), (0.0, 0.33)],
        "Riverside": [(0.05, 0.4), (0.5, 0.4), (0.55, 0.95), (0.05, 0.9)],
        "Old Town": [(0.6, 0.4), (0.95, 0.45), (0.98, 0.8), (0.8, 0.97), (0.6, 0.85)],
    }
    return {name: [(fx * nx, fy * ny) for fx, fy in ring] for name, ring in rings.items()}


def write_regions_geojson(
    path: str | Path,
    size: tuple[int, int],
    *,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_000.0, 5_350_000.0),
    pixel: float = 10.0,
) -> Path:
    """Write the :func:`district_polygons` as an RFC 7946 GeoJSON (WGS 84 lon/lat) with a ``name`` attribute.

    Edges are densified (32 points per edge) before reprojecting from ``crs`` so that they stay
    straight lines in the scene's CRS to well under a pixel.

    Args:
        path: output ``.geojson`` file.
        size: scene ``(Y, X)`` in pixels.
        crs, origin, pixel: the scene's georeferencing, as for :func:`write_scene_geotiff`.
    """
    from pyproj import Transformer

    transform = scene_transform(origin, pixel)
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    features = []
    for name, ring in district_polygons(size).items():
        dense = _densify(ring + ring[:1], 32)
        xs, ys = zip(*(transform @ pt for pt in dense))
        lon, lat = to_wgs84.transform(xs, ys)
        coords = [[round(a, 9), round(b, 9)] for a, b in zip(lon, lat)]
        coords[-1] = coords[0]
        features.append({"type": "Feature", "properties": {"name": name}, "geometry": {"type": "Polygon", "coordinates": [coords]}})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1), encoding="utf-8")
    return path


def _densify(ring: list[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    out = []
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]):
        out.extend((x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n) for t in range(n))
    return out + [ring[-1]]
