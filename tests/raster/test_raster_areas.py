"""pipeline.raster.areas against an independent geodesic computation (pyproj.Geod polygon areas)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS, Geod, Transformer

from pipeline.raster.areas import pixel_area_m2

TOL = 1e-3  # the contract: 0.1 %


def geodesic_pixel_area(crs, transform: Affine, row: int, col: int, densify: int = 16) -> float:
    """Independent reference: the pixel outline (edges densified, so straight lines in the CRS stay
    straight) transformed to the CRS's geodetic coordinates, measured with Geod on its ellipsoid."""
    crs = CRS.from_user_input(crs)
    to_geo = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    s = np.linspace(0.0, 1.0, densify, endpoint=False)
    cols = np.concatenate([col + s, np.full_like(s, col + 1), col + 1 - s, np.full_like(s, col)])
    rows = np.concatenate([np.full_like(s, row), row + s, np.full_like(s, row + 1), row + 1 - s])
    x, y = transform @ (cols, rows)
    lon, lat = to_geo.transform(x, y)
    geod: Geod = crs.get_geod()
    return abs(geod.polygon_area_perimeter(lon, lat)[0])


def _worst(crs, transform, shape, samples):
    areas = pixel_area_m2(crs, transform, slice(0, shape[0]), slice(0, shape[1]))
    assert areas.shape == shape and areas.dtype == np.float64
    errs = [abs(areas[r, c] - geodesic_pixel_area(crs, transform, r, c)) / geodesic_pixel_area(crs, transform, r, c) for r, c in samples]
    return max(errs), areas


def _samples(shape, n=12, seed=1):
    rng = np.random.default_rng(seed)
    pts = [(0, 0), (shape[0] - 1, shape[1] - 1), (0, shape[1] - 1), (shape[0] - 1, 0)]
    return pts + [(int(r), int(c)) for r, c in zip(rng.integers(0, shape[0], n), rng.integers(0, shape[1], n))]


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:4326", Affine(0.001, 0, 12.0, 0, -0.001, 55.0)),  # ~100 m cells at 55 N
        ("EPSG:4326", Affine(0.5, 0, -30.0, 0, -0.5, 89.0)),  # coarse cells up to the pole
        ("EPSG:4326", Affine(0.5, 0, -30.0, 0, 0.5, -60.0)),  # south-up grid in the south
    ],
)
def test_geographic_cells_are_exact(crs, transform):
    worst, areas = _worst(crs, transform, (120, 90), _samples((120, 90)))
    assert worst < 1e-5
    assert np.all(areas[:, :1] == areas)  # constant along a row


def test_rotated_geographic_grid():
    t = Affine(0.001 * np.cos(0.3), -0.001 * np.sin(0.3), 5.0, 0.001 * np.sin(0.3), -0.001 * np.cos(0.3), 40.0)
    worst, _ = _worst("EPSG:4326", t, (50, 60), _samples((50, 60)))
    assert worst < 1e-6


def test_utm_matches_geodesic(landsat):
    with rasterio.open(landsat) as src:
        crs, t, shape = src.crs, src.transform, src.shape
    worst, areas = _worst(crs, t, shape, _samples(shape))
    assert worst < TOL / 100  # far inside 0.1 %
    # UTM is conformal, not equal-area: areas vary by the scale factor across the scene
    assert areas.max() / areas.min() > 1.0005


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:3857", Affine(1000.0, 0, -1.0e6, 0, -1000.0, 8.5e6)),  # Web Mercator, 1 km, 60-61 N
        ("EPSG:3857", Affine(30.0, 0, 1.0e6, 0, -30.0, 6.0e6)),
        ("EPSG:2263", Affine(100.0, 0, 900000.0, 0, -100.0, 250000.0)),  # US survey feet, Lambert conformal
        ("EPSG:3413", Affine(1000.0, 0, 0.0, 0, -1000.0, 0.0)),  # polar stereographic
    ],
)
def test_non_equal_area_projections(crs, transform):
    worst, areas = _worst(crs, transform, (200, 150), _samples((200, 150)))
    assert worst < TOL / 100


def test_web_mercator_is_measured_on_the_wgs84_ellipsoid():
    # EPSG:3857 projects WGS 84 coordinates with sphere formulas; PROJ's get_factors measures the
    # areal scale against that sphere (0.3 % off at 60 N); we measure against the datum's ellipsoid
    t = Affine(1000.0, 0, -1.0e6, 0, -1000.0, 8.5e6)
    ours = pixel_area_m2("EPSG:3857", t, slice(10, 11), slice(10, 11))[0, 0]
    ref = geodesic_pixel_area("EPSG:3857", t, 10, 10)
    assert abs(ours - ref) / ref < 1e-5


@pytest.mark.parametrize("epsg", ["EPSG:6933", "EPSG:5070", "EPSG:3035"])
def test_equal_area_projection_is_constant(epsg):
    t = Affine(30.0, 0, 1.0e5, 0, -30.0, 2.0e6)
    areas = pixel_area_m2(epsg, t, slice(0, 40), slice(0, 40))
    assert np.all(areas == 900.0)
    assert abs(areas[5, 5] - geodesic_pixel_area(epsg, t, 5, 5)) / 900.0 < 1e-6


def test_window_of_a_larger_grid_matches_the_full_grid():
    t = Affine(30.0, 0, 1.0e6, 0, -30.0, 6.0e6)
    full = pixel_area_m2("EPSG:3857", t, slice(0, 700), slice(0, 500))
    part = pixel_area_m2("EPSG:3857", t, slice(300, 450), slice(129, 480))
    np.testing.assert_allclose(part, full[300:450, 129:480], rtol=1e-9)


def test_slices_need_bounds():
    with pytest.raises(ValueError, match="explicit"):
        pixel_area_m2("EPSG:4326", Affine.identity(), slice(None, 4), slice(0, 4))
