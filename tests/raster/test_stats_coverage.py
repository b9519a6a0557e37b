"""pipeline.raster.coverage and compute_stats' edge coverage: exact shares against independent per-pixel
references (shapely, exactextract), over many small regions, any block size and any grid orientation."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.crs import CRS as RioCRS

from models.spec import ClassInfo
from pipeline.raster.areas import pixel_area_m2
from pipeline.raster.coverage import polygon_coverage
from pipeline.raster.ingest import RasterInfo
from pipeline.raster.regions import Regions, ellipsoidal_area_m2, ellipsoidal_areas_m2
from pipeline.raster.stats import compute_stats

CLASSES = tuple(ClassInfo(i, f"c{i}", "#000000") for i in range(4))
GRIDS = {
    "north-up": Affine(10.0, 0, 500000.0, 0, -10.0, 6000000.0),
    "south-up": Affine(10.0, 0, 500000.0, 0, 10.0, 6000000.0),
    "mirrored": Affine(-10.0, 0, 500000.0, 0, -10.0, 6000000.0),
    "rotated": Affine(10 * np.cos(0.2), -10 * np.sin(0.2), 500000.0, 10 * np.sin(0.2), -10 * np.cos(0.2), 6000000.0),
    "sheared": Affine(10.0, 3.0, 500000.0, 0.0, -10.0, 6000000.0),
}


def _info(crs, transform, h, w):
    return RasterInfo("syn.tif", w, h, 1, "uint8", RioCRS.from_user_input(crs), transform, None, ("b",), (1,))


def _pixel_cover(t: Affine, h: int, w: int, geom) -> np.ndarray:
    """Independent reference: each pixel's (parallelogram's) share inside ``geom`` by shapely, ``(Y, X)``."""
    cc, rr = np.meshgrid(np.arange(w), np.arange(h))
    corners = [t @ (cc + dc, rr + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
    pixels = shapely.polygons(np.stack([np.stack([x for x, _ in corners], -1), np.stack([y for _, y in corners], -1)], -1))
    return shapely.area(shapely.intersection(pixels, geom)) / shapely.area(pixels)


def _districts(t: Affine, h: int, w: int, n: int, seed: int = 0) -> list:
    """``n`` Voronoi districts over a disc a little larger than the grid, one with a hole, plus a district
    inside the hole and one of two parts: every kind of edge, and pixels cut by several regions."""
    rng = np.random.default_rng(seed)
    cx, cy = t @ (w / 2, h / 2)
    radius = 0.6 * float(np.hypot(*(np.array(t @ (w, h)) - np.array(t @ (0, 0)))))
    disc = shapely.Point(cx, cy).buffer(radius, 64)
    seeds = shapely.multipoints(rng.uniform(-radius, radius, (n, 2)) + (cx, cy))
    cells = [shapely.intersection(c, disc) for c in shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=disc))]
    hole = shapely.Point(t @ (w * 0.3, h * 0.4)).buffer(4.3 * abs(t.a), 16)
    cells = [c.difference(hole) for c in cells]
    island = shapely.Point(t @ (w * 0.3, h * 0.4)).buffer(2.1 * abs(t.a), 16)
    cells.append(island)
    return [c for c in cells if not c.is_empty]


def _dense(cov, n: int, h: int, w: int) -> np.ndarray:
    out = np.zeros((n, h * w))
    owner = cov.owner.ravel()
    whole = owner >= 0
    out[owner[whole], np.flatnonzero(whole)] = 1.0
    np.add.at(out, (cov.polygon, cov.cell), cov.cover)
    return out.reshape(n, h, w)


@pytest.mark.parametrize("grid", GRIDS)
def test_coverage_of_many_regions_equals_shapely_per_pixel(grid):
    t = GRIDS[grid]
    h, w = 37, 53
    geoms = _districts(t, h, w, 40)
    cov = polygon_coverage(geoms, t, (h, w))
    assert cov is not None
    got = _dense(cov, len(geoms), h, w)
    ref = np.stack([_pixel_cover(t, h, w, g) for g in geoms])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    assert np.all((cov.cover > 0) & (cov.cover <= 1))
    # the districts tile the disc: every pixel inside it is covered exactly once
    inside = _pixel_cover(t, h, w, shapely.union_all(geoms)) == 1.0
    np.testing.assert_allclose(got.sum(axis=0)[inside], 1.0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("grid", GRIDS)
def test_rectangles_with_edges_along_rows_and_columns(grid):
    """Edges along pixel rows and columns, inside a pixel or on its lines: they cut every pixel along them
    or none; rectangles sharing edges, one with a hole and one in it."""
    t = GRIDS[grid]
    h, w = 30, 40

    def rect(c0, r0, c1, r1):
        return shapely.Polygon([t @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))])

    geoms = [
        rect(2.5, 3.25, 17.0, 9.7).difference(rect(5.2, 5.0, 8.6, 7.5)),
        rect(5.2, 5.0, 8.6, 7.5),
        rect(17.0, 3.25, 30.5, 9.7),  # shares an edge along a pixel column
        rect(2.5, 9.7, 30.5, 14.0),  # shares edges inside a pixel row
        rect(-5.0, 14.0, 45.0, 21.0),  # beyond the block on both sides, edges on pixel rows
        rect(10.0, 21.0, 20.0, 40.0),  # beyond the bottom
    ]
    cov = polygon_coverage(geoms, t, (h, w))
    assert cov is not None
    ref = np.stack([_pixel_cover(t, h, w, g) for g in geoms])
    np.testing.assert_allclose(_dense(cov, len(geoms), h, w), ref, rtol=0, atol=1e-9)


def test_edges_on_pixel_and_block_lines_count_whole_pixels():
    t = GRIDS["north-up"]
    h, w = 40, 60
    corners = ((0, 0, 20, 40), (20, 0, 60, 13), (20, 13, 60, 40))
    boxes = [shapely.Polygon([t @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]) for c0, r0, c1, r1 in corners]
    cov = polygon_coverage(boxes, t, (h, w))
    assert cov.cell.size == 0  # no pixel is cut
    expected = np.zeros((h, w), np.int32)
    expected[13:, 20:] = 2
    expected[:13, 20:] = 1
    np.testing.assert_array_equal(cov.owner, expected)


def test_overlapping_regions_are_refused():
    t = GRIDS["north-up"]
    a = shapely.Polygon([t @ (c, r) for c, r in ((2.5, 2.5), (30.2, 2.5), (30.2, 20.7), (2.5, 20.7))])
    b = shapely.Polygon([t @ (c, r) for c, r in ((10.3, 5.5), (40.2, 5.5), (40.2, 25.7), (10.3, 25.7))])
    assert polygon_coverage([a, b], t, (32, 48)) is None
    assert polygon_coverage([a], t, (32, 48)) is not None


def _labels(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, len(CLASSES), (h, w)).astype(np.uint8)


@pytest.mark.parametrize("grid", ["north-up", "rotated", "south-up"])
def test_many_small_regions_match_an_independent_per_region_computation(grid):
    """Area per class per region: sum over pixels of shapely's share x the pixel's ellipsoidal area."""
    t = GRIDS[grid]
    h, w = 48, 64
    info = _info("EPSG:32633", t, h, w)
    labels = _labels(h, w)
    geoms = _districts(t, h, w, 60)
    regions = Regions(names=tuple(f"d{i}" for i in range(len(geoms))), geometries=tuple(geoms))
    ds = compute_stats(labels, None, info, regions, CLASSES, block=16)
    px = pixel_area_m2(info.crs, t, slice(0, h), slice(0, w))
    for i, g in enumerate(geoms):
        cover = _pixel_cover(t, h, w, g)
        for c in CLASSES:
            on = labels == c.id
            assert float(ds.pixel_count[i, c.id]) == pytest.approx(float(cover[on].sum()), abs=1e-8)
            assert float(ds.area_m2[i, c.id]) == pytest.approx(float((cover * px)[on].sum()), rel=1e-11, abs=1e-6)


def test_block_size_changes_nothing_with_many_regions():
    t = GRIDS["north-up"]
    h, w = 150, 170
    info = _info("EPSG:32633", t, h, w)
    labels = _labels(h, w)
    mask = np.random.default_rng(2).random((h, w)) > 0.1
    geoms = _districts(t, h, w, 120, seed=3)
    regions = Regions(names=tuple(f"d{i}" for i in range(len(geoms))), geometries=tuple(geoms))
    runs = [compute_stats(labels, mask, info, regions, CLASSES, block=b) for b in (32, 100, 170)]
    for other in runs[1:]:
        for name in ("area_m2", "pixel_count", "nodata_area_m2", "nodata_pixel_count"):
            np.testing.assert_allclose(other[name].values, runs[0][name].values, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("crs, t", [("EPSG:32633", GRIDS["north-up"]), ("EPSG:32633", GRIDS["sheared"]), ("EPSG:4326", Affine(0.01, 0, 10.0, 0, -0.01, 60.0))])
def test_edges_and_exactextract_agree(crs, t):
    """The two coverage methods of compute_stats, on a projected, a sheared and a geographic grid (cut
    pixels measured on the ellipsoid there), with nodata and labels that are no class."""
    h, w = 70, 90
    info = _info(crs, t, h, w)
    labels = _labels(h, w)
    labels[::7, ::5] = 9  # no class
    mask = np.random.default_rng(4).random((h, w)) > 0.2
    geoms = _districts(t, h, w, 50, seed=5)
    regions = Regions(names=tuple(f"d{i}" for i in range(len(geoms))), geometries=tuple(geoms))
    edges = compute_stats(labels, mask, info, regions, CLASSES, block=32)
    exact = compute_stats(labels, mask, info, regions, CLASSES, block=32, coverage="exactextract")
    for name in ("area_m2", "pixel_count", "nodata_area_m2", "nodata_pixel_count", "region_area_m2"):
        np.testing.assert_allclose(edges[name].values, exact[name].values, rtol=1e-6, atol=1e-6 * float(exact[name].max()))


def test_overlapping_and_invalid_regions_take_exactextract_and_stay_exact():
    t = GRIDS["north-up"]
    h, w = 40, 50
    info = _info("EPSG:32633", t, h, w)
    labels = _labels(h, w)
    a = shapely.Polygon([t @ (c, r) for c, r in ((2.5, 2.5), (30.2, 2.5), (30.2, 20.7), (2.5, 20.7))])
    b = shapely.Polygon([t @ (c, r) for c, r in ((10.3, 5.5), (40.2, 5.5), (40.2, 35.7), (10.3, 35.7))])
    bowtie = shapely.Polygon([t @ (c, r) for c, r in ((1.5, 25.5), (8.5, 38.5), (8.5, 25.5), (1.5, 38.5))])  # invalid
    for geoms in ([a, b], [a, bowtie]):
        regions = Regions(names=tuple(f"r{i}" for i in range(len(geoms))), geometries=tuple(geoms))
        edges = compute_stats(labels, None, info, regions, CLASSES, block=16)
        exact = compute_stats(labels, None, info, regions, CLASSES, block=16, coverage="exactextract")
        np.testing.assert_allclose(edges.pixel_count.values, exact.pixel_count.values, rtol=1e-9)
    cover = _pixel_cover(t, h, w, b)
    regions = Regions(names=("a", "b"), geometries=(a, b))
    ds = compute_stats(labels, None, info, regions, CLASSES, block=16)
    for c in CLASSES:
        assert float(ds.pixel_count.sel(region="b")[c.id]) == pytest.approx(float(cover[labels == c.id].sum()), abs=1e-5)


def _geodesic_area(geom, crs, step) -> float:
    """Independent reference: the polygon densified in its CRS, moved to lon/lat, measured by Geod part by part."""
    crs = CRS.from_user_input(crs)
    dense = shapely.segmentize(geom, step)
    if not crs.is_geographic:
        tr = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        dense = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return sum(abs(crs.get_geod().geometry_area_perimeter(shapely.orient_polygons(p))[0]) for p in shapely.get_parts(dense))


@pytest.mark.parametrize("crs, t, step", [("EPSG:32633", GRIDS["north-up"], 1.0), ("EPSG:3857", Affine(30.0, 0, 1.5e6, 0, -30.0, 8.5e6), 3.0),
                                          ("EPSG:4326", Affine(1e-4, 0, 15.0, 0, -1e-4, 60.0), 1e-5)])  # fmt: skip
def test_region_areas_in_one_batch_match_geod_region_by_region(crs, t, step):
    geoms = _districts(t, 300, 400, 80, seed=6)
    geoms.append(shapely.MultiPolygon([geoms[0], shapely.Point(t @ (-30, -30)).buffer(8 * abs(t.a))]))
    batch = ellipsoidal_areas_m2(geoms, crs)
    ref = np.array([_geodesic_area(g, crs, step) for g in geoms])
    np.testing.assert_allclose(batch, ref, rtol=1e-8, atol=1e-3)  # Geod's own rounding: ~1e-4 m^2 on any polygon
    assert [ellipsoidal_area_m2(g, crs) for g in geoms[:5]] == batch[:5].tolist()  # one at a time or in a batch: the same
