"""Scenes across the antimeridian: regions on the other side of +/-180 count, with their true areas.

Regions are written the RFC 7946 way (split at +/-180, longitudes in -180..180) while a
geographic raster across the antimeridian runs past 180 (or below -180). Independent reference:
``pyproj.Geod`` areas of the region polygons in longitude/latitude."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.crs import CRS

from models.spec import ClassInfo
from pipeline.raster.ingest import RasterInfo
from pipeline.raster.regions import read_regions
from pipeline.raster.stats import compute_stats

CLASSES = (ClassInfo(0, "water", "#1f78b4"), ClassInfo(1, "forest", "#33a02c"))
WGS84 = Geod(ellps="WGS84")
RTOL = 1e-6  # the README's promise for areas


def _info(crs, transform, h, w):
    return RasterInfo("am.tif", w, h, 1, "uint8", CRS.from_user_input(crs), transform, None, ("b",), (1,))


def _geod_area(geom) -> float:
    """Geodesic area of a lon/lat (multi)polygon, each part densified to 1e-4 degree."""
    return sum(abs(WGS84.geometry_area_perimeter(shapely.segmentize(p, 1e-4))[0]) for p in shapely.get_parts(geom))


def _stats(regions_path, info):
    regions = read_regions(regions_path, info)
    labels = np.zeros((info.height, info.width), np.uint8)
    labels[:, info.width // 2 :] = 1
    return compute_stats(labels, None, info, regions, CLASSES, block=64)


def _observed(ds):
    return ((ds.region_area_m2 - ds.nodata_area_m2) / ds.region_total_area_m2).to_series().to_dict()


SPLIT = {  # the reviewer's regions (RFC 7946: split at +/-180)
    "fiji_split": shapely.MultiPolygon([shapely.box(179.97, -16.05, 180.0, -16.02), shapely.box(-180.0, -16.05, -179.97, -16.02)]),
    "east_only": shapely.box(179.96, -16.09, 179.99, -16.06),
    "west_only": shapely.box(-179.99, -16.09, -179.96, -16.06),
}


@pytest.fixture
def split_regions(tmp_path):
    path = tmp_path / "antimeridian.geojson"
    gpd.GeoDataFrame({"name": list(SPLIT)}, geometry=list(SPLIT.values()), crs="EPSG:4326").to_file(path, driver="GeoJSON")
    return path


def test_a_raster_past_180_meets_regions_on_both_sides(split_regions):
    # EPSG:4326, lon 179.95 .. 180.05, lat -16.0 .. -16.1 (the reviewer's geo_am.tif grid)
    info = _info("EPSG:4326", Affine(0.0005, 0, 179.95, 0, -0.0005, -16.0), 200, 200)
    ds = _stats(split_regions, info)
    assert list(ds.region.values) == ["fiji_split", "east_only", "west_only"]  # west_only was dropped as "does not meet"
    for name, geom in SPLIT.items():
        ref = _geod_area(geom)
        assert float(ds.region_area_m2.sel(region=name)) == pytest.approx(ref, rel=RTOL), name
        assert float(ds.region_total_area_m2.sel(region=name)) == pytest.approx(ref, rel=RTOL), name  # counted once
    assert _observed(ds) == pytest.approx({name: 1.0 for name in SPLIT}, rel=RTOL)  # fiji_split was 0.50
    # in 0.0005-degree pixels: 0.03 x 0.03 degrees west of -180; 0.06 x 0.03 across it
    assert float(ds.pixel_count.sel(region="west_only").sum()) == pytest.approx(60 * 60, rel=1e-9)
    assert float(ds.pixel_count.sel(region="fiji_split").sum()) == pytest.approx(120 * 60, rel=1e-9)


def test_a_raster_below_minus_180_meets_regions_given_near_plus_180(tmp_path):
    # the reverse: the raster runs -180.05 .. -179.95; regions east of 180 come in 179.9..180, or across it
    info = _info("EPSG:4326", Affine(0.0005, 0, -180.05, 0, -0.0005, -16.0), 200, 200)
    regions = {
        "east_side": shapely.box(179.96, -16.09, 179.99, -16.06),  # inside the raster at -180.04 .. -180.01
        "across": shapely.box(179.98, -16.05, 180.02, -16.02),  # one polygon past 180 (allowed, up to 360)
        "partly": shapely.box(179.9, -16.05, 179.99, -16.02),  # two thirds outside the raster
    }
    path = tmp_path / "east.gpkg"
    gpd.GeoDataFrame({"name": list(regions)}, geometry=list(regions.values()), crs="EPSG:4326").to_file(path, driver="GPKG")
    ds = _stats(path, info)
    assert list(ds.region.values) == list(regions)
    observed = _observed(ds)
    for name in ("east_side", "across"):
        assert float(ds.region_area_m2.sel(region=name)) == pytest.approx(_geod_area(regions[name]), rel=RTOL)
        assert observed[name] == pytest.approx(1.0, rel=RTOL)
    assert float(ds.region_total_area_m2.sel(region="partly")) == pytest.approx(_geod_area(regions["partly"]), rel=RTOL)
    inside = _geod_area(shapely.box(179.95, -16.05, 179.99, -16.02))
    assert float(ds.region_area_m2.sel(region="partly")) == pytest.approx(inside, rel=RTOL)


@pytest.mark.parametrize("crs", ["EPSG:32760", "EPSG:3832"])  # UTM 60 S (central meridian 177 E); PDC Mercator (150 E)
def test_a_projected_raster_across_the_antimeridian_still_meets_split_regions(split_regions, crs):
    to_map = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xs, ys = to_map.transform([179.94, 180.06, 179.94, -179.94], [-15.99, -15.99, -16.11, -16.11])
    x0, y1 = min(xs), max(ys)
    w, h = int((max(xs) - x0) / 20) + 1, int((y1 - min(ys)) / 20) + 1
    info = _info(crs, Affine(20.0, 0, x0, 0, -20.0, y1), h, w)
    ds = _stats(split_regions, info)
    assert list(ds.region.values) == list(SPLIT)
    for name, geom in SPLIT.items():
        ref = _geod_area(geom)
        assert float(ds.region_area_m2.sel(region=name)) == pytest.approx(ref, rel=RTOL), name
        assert float(ds.region_total_area_m2.sel(region=name)) == pytest.approx(ref, rel=RTOL), name


def test_projected_regions_across_the_antimeridian_on_a_geographic_raster(tmp_path):
    # a region in PDC Mercator across 180 comes back from PROJ with longitudes jumping +180 -> -180
    to_map = Transformer.from_crs("EPSG:4326", "EPSG:3832", always_xy=True)
    (xa, xb), (ya, yb) = to_map.transform([179.97, -179.97], [-16.05, -16.02])
    box = shapely.box(xa, ya, xb + 40_075_016.686, yb) if xb < xa else shapely.box(xa, ya, xb, yb)
    path = tmp_path / "pdc.gpkg"
    gpd.GeoDataFrame({"name": ["pdc"]}, geometry=[box], crs="EPSG:3832").to_file(path, driver="GPKG")
    info = _info("EPSG:4326", Affine(0.0005, 0, 179.95, 0, -0.0005, -16.0), 200, 200)
    ds = _stats(path, info)
    # reference: the box's densified outline in lon/lat, as PROJ returns it (Geod takes the jump in stride)
    ring = np.asarray(shapely.segmentize(box, 10.0).exterior.coords)
    lon, lat = Transformer.from_crs("EPSG:3832", "EPSG:4326", always_xy=True).transform(ring[:, 0], ring[:, 1])
    ref = abs(WGS84.polygon_area_perimeter(lon, lat)[0])
    assert float(ds.region_total_area_m2.item()) == pytest.approx(ref, rel=RTOL)
    assert float(ds.region_area_m2.item()) == pytest.approx(ref, rel=RTOL)  # all of it inside the scene
