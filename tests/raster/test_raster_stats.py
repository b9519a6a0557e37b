"""pipeline.raster.stats: areas per region and class against independent geodesic areas; the stats store."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine
from pyproj import CRS, Geod, Transformer
from rasterio.crs import CRS as RioCRS

from models.spec import ClassInfo
from pipeline.errors import InputError
from pipeline.raster.ingest import RasterInfo, probe_raster
from pipeline.raster.regions import Regions, read_regions, scene_region
from pipeline.raster.stats import append_stats, area_over_time, compute_stats, plot_area_over_time

CLASSES = (ClassInfo(0, "water", "#1f78b4"), ClassInfo(1, "forest", "#33a02c"), ClassInfo(2, "urban", "#e31a1c"))
WGS84 = Geod(ellps="WGS84")


def _info(crs, transform, h, w):
    return RasterInfo("syn.tif", w, h, 1, "uint8", RioCRS.from_user_input(crs), transform, None, ("b",), (1,))


def geodesic_area(geom, crs, step) -> float:
    """Independent reference: the polygon densified in its CRS, moved to lon/lat, measured by Geod."""
    crs = CRS.from_user_input(crs)
    dense = shapely.segmentize(geom, step)
    if not crs.is_geographic:
        tr = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        dense = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return abs(crs.get_geod().geometry_area_perimeter(dense)[0])


def _landsat_labels(path):
    with rasterio.open(path) as src:
        band = src.read(1)
        valid = src.dataset_mask() > 0
    return (band // 100).astype(np.uint8), valid


def test_landsat_bahamas_region_area_matches_geodesic(landsat, bahamas):
    info = probe_raster(landsat)
    labels, valid = _landsat_labels(landsat)
    regions = read_regions(bahamas, info)
    ds = compute_stats(labels, valid, info, regions, CLASSES, block=256)
    assert ds.area_m2.dims == ("region", "class") and list(ds["class"].values) == ["water", "forest", "urban"]
    ref = geodesic_area(regions.geometries[0], info.crs.to_wkt(), step=300.0)
    total = float(ds.region_area_m2.sel(region="The Bahamas"))
    assert abs(total - ref) / ref < 1e-5
    assert total == pytest.approx(float(ds.area_m2.sum() + ds.nodata_area_m2.sum()), rel=1e-12)
    covered = float(ds.pixel_count.sum() + ds.nodata_pixel_count.sum())
    assert 85_000 < covered < 95_000  # "about 90,000 of its pixels"
    np.testing.assert_allclose(ds.area_ha.values, ds.area_m2.values / 1e4)
    np.testing.assert_allclose(ds.share.sum("class").values, 1.0)


def test_landsat_whole_scene_counts_every_pixel(landsat):
    info = probe_raster(landsat)
    labels, valid = _landsat_labels(landsat)
    ds = compute_stats(labels, valid, info, scene_region(info), CLASSES, block=200)
    assert list(ds.region.values) == ["scene"]
    for i, c in enumerate(CLASSES):
        assert ds.pixel_count.values[0, i] == np.count_nonzero(valid & (labels == c.id))
    assert ds.nodata_pixel_count.values[0] == np.count_nonzero(~valid) > 0
    ref = geodesic_area(_footprint_box(info), info.crs.to_wkt(), step=300.0)
    assert abs(float(ds.region_area_m2[0]) - ref) / ref < 1e-5


def _footprint_box(info):
    west, south, east, north = rasterio.transform.array_bounds(info.height, info.width, info.transform)
    return shapely.box(west, south, east, north)


def test_block_size_changes_nothing(landsat, bahamas):
    info = probe_raster(landsat)
    labels, valid = _landsat_labels(landsat)
    regions = read_regions(bahamas, info)
    a = compute_stats(labels, valid, info, regions, CLASSES, block=128)
    b = compute_stats(labels, valid, info, regions, CLASSES, block=1000)
    for name in ("area_m2", "pixel_count", "nodata_area_m2"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-10)


def test_synthetic_epsg4326_partial_pixels_against_geodesic():
    # 0.01 deg grid at 58..60 N; left half water, right half forest
    t = Affine(0.01, 0, 10.0, 0, -0.01, 60.0)
    h, w = 200, 300
    info = _info("EPSG:4326", t, h, w)
    labels = np.zeros((h, w), np.uint8)
    labels[:, 150:] = 1
    # region edges cut pixels: lon 10.505 .. 12.4975, lat 58.2033 .. 59.8012
    box = shapely.box(10.505, 58.2033, 12.4975, 59.8012)
    regions = Regions(names=("box",), geometries=(box,))
    ds = compute_stats(labels, None, info, regions, CLASSES, block=64)
    water_ref = geodesic_area(shapely.box(10.505, 58.2033, 11.5, 59.8012), "EPSG:4326", step=0.001)
    forest_ref = geodesic_area(shapely.box(11.5, 58.2033, 12.4975, 59.8012), "EPSG:4326", step=0.001)
    water = float(ds.area_m2.sel({"class": "water"})[0])
    forest = float(ds.area_m2.sel({"class": "forest"})[0])
    assert abs(water - water_ref) / water_ref < 1e-5
    assert abs(forest - forest_ref) / forest_ref < 1e-5
    assert float(ds.area_m2.sel({"class": "urban"})[0]) == 0.0
    assert float(ds.pixel_count.sum()) == pytest.approx((12.4975 - 10.505) * (59.8012 - 58.2033) / 0.01**2, rel=1e-9)


def test_synthetic_epsg3857_with_a_lon_lat_region():
    # Web Mercator maps a lon/lat box to an axis-parallel rectangle; its true area is the geodesic one
    t = Affine(250.0, 0, 1.0e6, 0, -250.0, 8.0e6)
    h, w = 400, 400
    info = _info("EPSG:3857", t, h, w)
    labels = np.full((h, w), 2, np.uint8)
    x0, y0, x1, y1 = 1.0e6 + 1234.5, 7.9e6 + 987.6, 1.1e6 - 4321.1, 8.0e6 - 55.5  # cuts pixels on all sides
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    lonlat = shapely.box(*to_lonlat.transform(x0, y0), *to_lonlat.transform(x1, y1))
    regions = Regions(names=("r",), geometries=(shapely.box(x0, y0, x1, y1),))
    ds = compute_stats(labels, np.ones((h, w), bool), info, regions, CLASSES, block=100)
    ref = geodesic_area(lonlat, "EPSG:4326", step=0.001)
    got = float(ds.area_m2.sel({"class": "urban"})[0])
    assert abs(got - ref) / ref < 1e-4
    # the planar (Mercator) area is ~3.5x too big here: the correction matters
    assert (x1 - x0) * (y1 - y0) / got > 3.0


def _shapely_coverage(t: Affine, h: int, w: int, geom) -> np.ndarray:
    """Independent reference: the covered share of every pixel (its parallelogram in the CRS), ``(Y, X)``."""
    cc, rr = np.meshgrid(np.arange(w), np.arange(h))
    corners = [t @ (cc + dc, rr + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
    pixels = shapely.polygons(np.stack([np.stack([x for x, _ in corners], -1), np.stack([y for _, y in corners], -1)], -1))
    return shapely.area(shapely.intersection(pixels, geom)) / shapely.area(pixels)


@pytest.mark.parametrize(
    "t",
    [
        Affine(10 * np.cos(0.2), -10 * np.sin(0.2), 500000.0, 10 * np.sin(0.2), -10 * np.cos(0.2), 6000000.0),  # rotated
        Affine(9.848, 1.736, 500000.0, 1.736, 9.848, 6000000.0),  # rotated and mirrored (south-up)
        Affine(10.0, 3.0, 500000.0, 0.0, -10.0, 6000000.0),  # sheared
    ],
)
def test_rotated_raster_gets_exact_fractional_coverage(t):
    h, w = 60, 80
    info = _info("EPSG:32633", t, h, w)
    labels = (np.arange(w)[None, :] // 7 % 3 * np.ones((h, 1))).astype(np.uint8)
    # an irregular region with a hole, inside the scene; its edges cut pixels at every angle
    angles = np.linspace(0, 2 * np.pi, 37)[:-1]
    radius = 220 + 60 * np.sin(5 * angles)
    cx, cy = t @ (40, 30)
    ring = np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
    region = shapely.Polygon(ring).difference(shapely.Point(cx + 15, cy - 10).buffer(55))
    ds = compute_stats(labels, None, info, Regions(names=("r",), geometries=(region,)), CLASSES, block=32)
    cover = _shapely_coverage(t, h, w, region)
    for c in CLASSES:
        got = float(ds.pixel_count.sel(region="r", **{"class": c.name}))
        assert got == pytest.approx(float(cover[labels == c.id].sum()), abs=1e-6), c.name
    # fully inside the scene, so observed = 1 (the pixel-centre rule gave 0.9994 on the reviewer's grid)
    observed = float(((ds.region_area_m2 - ds.nodata_area_m2) / ds.region_total_area_m2)[0])
    assert observed == pytest.approx(1.0, abs=1e-6)
    assert float(ds.region_total_area_m2[0]) == pytest.approx(geodesic_area(region, "EPSG:32633", step=1.0), rel=1e-6)
    # a region whose edges follow pixel edges covers whole pixels
    inner = shapely.Polygon([t @ (c, r) for c, r in ((10, 10), (50, 10), (50, 40), (10, 40))])
    ds = compute_stats(labels, None, info, Regions(names=("in",), geometries=(inner,)), CLASSES, block=32)
    assert float(ds.pixel_count.sum()) == pytest.approx(40 * 30, abs=1e-6)


def test_labels_shape_must_match():
    info = _info("EPSG:32633", Affine(10, 0, 0, 0, -10, 0), 10, 10)
    with pytest.raises(InputError, match="labels shape"):
        compute_stats(np.zeros((5, 5), np.uint8), None, info, scene_region(info), CLASSES)


# --- the stats store ---


def _stats(value: float, regions=("scene",)):
    names = list(regions)
    area = np.full((len(names), 3), value)
    return xr.Dataset(
        {"area_m2": (("region", "class"), area), "nodata_area_m2": ("region", np.zeros(len(names)))},
        coords={"region": np.array(names, dtype=object), "class": np.array([c.name for c in CLASSES], dtype=object),
                "class_id": ("class", [0, 1, 2]), "class_color": ("class", np.array([c.color for c in CLASSES], dtype=object))},
    )


def test_append_twice_with_the_same_time_replaces(tmp_path):
    store = tmp_path / "stats.zarr"
    append_stats(_stats(1.0), store, time="2024-06-01T02:00", scene="a")
    append_stats(_stats(2.0), store, time="2024-06-01T02:00", scene="a")
    ds = xr.open_zarr(store)
    assert ds.area_m2.dims == ("time", "scene", "region", "class")
    assert ds.sizes["time"] == 1 and ds.sizes["scene"] == 1
    assert (ds.area_m2.values == 2.0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.zarr"]


def test_appends_accumulate_over_time_scenes_and_regions(tmp_path):
    store = tmp_path / "stats.zarr"
    append_stats(_stats(1.0), store, time="2024-06-01", scene="a")
    append_stats(_stats(3.0, regions=("north", "south")), store, time="2024-06-02", scene="b")
    append_stats(_stats(5.0), store, time="2024-06-02", scene="a")
    append_stats(_stats(7.0, regions=("north",)), store, time="2024-06-02", scene="b")  # replaces b's entry
    ds = xr.open_zarr(store)
    assert ds.sizes == {"time": 2, "scene": 2, "region": 3, "class": 3}
    assert list(ds.class_id.values) == [0, 1, 2]
    sel = ds.area_m2.sel({"scene": "b", "class": "forest"}).sel(time="2024-06-02")
    assert float(sel.sel(region="north")) == 7.0
    assert np.isnan(float(sel.sel(region="south")))  # the replaced entry left no stale value
    over = area_over_time(store, "forest", "scene")
    assert list(over.values) == [1.0, 5.0] and over.dims == ("time",)
    assert list(area_over_time(store, 1, "north").values[1:]) == [7.0]
    with pytest.raises(InputError, match="no class 'trees' .*classes: water, forest, urban"):
        area_over_time(store, "trees", "scene")
    with pytest.raises(InputError, match="no region 'east'"):
        area_over_time(store, "forest", "east")
    png = plot_area_over_time(store, "forest", "scene", tmp_path / "forest.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
