"""pipeline.raster.regions: reading, reprojection, naming, clipping and clear errors."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from pipeline.errors import InputError
from pipeline.raster.ingest import RasterInfo, probe_raster
from pipeline.raster.regions import footprint, read_regions, scene_region


def _info(crs="EPSG:32633", transform=Affine(10.0, 0, 500000.0, 0, -10.0, 6000000.0), h=100, w=200):
    return RasterInfo("r.tif", w, h, 1, "uint8", CRS.from_user_input(crs), transform, None, ("b",), (1,))


def _write(tmp_path, name, records, crs, driver=None):
    gdf = gpd.GeoDataFrame(records, crs=crs)
    path = tmp_path / name
    gdf.to_file(path, driver=driver) if driver else gdf.to_file(path)
    return path


def test_bahamas_polygon_reprojected_and_clipped_to_landsat(landsat, bahamas):
    info = probe_raster(landsat)
    regions = read_regions(bahamas, info)
    assert regions.names == ("The Bahamas",) and not regions.whole_scene
    geom = regions.geometries[0]
    assert footprint(info).covers(geom)
    # about 90,000 Landsat pixels of 300 m (README)
    assert 85_000 < geom.area / abs(info.transform.a * info.transform.e) < 95_000


def test_regions_not_intersecting_the_raster(naip, bahamas, tmp_path):
    info = probe_raster(naip)
    with pytest.raises(InputError, match=r"bahamas_country\.geojson: none of its 1 region\(s\) intersects the raster .*naip.*same place"):
        read_regions(bahamas, info)


def test_missing_attribute_lists_the_available_ones(tmp_path):
    info = _info()
    box = shapely.box(500100, 5999500, 500900, 5999900)
    path = _write(tmp_path, "d.gpkg", {"district": ["north"], "code": [7], "geometry": [box]}, "EPSG:32633")
    with pytest.raises(InputError, match=r"d\.gpkg: no attribute 'name' \(available attributes: district, code\) \(pick one with --region-field\)"):
        read_regions(path, info, field="name")
    assert read_regions(path, info, field="district").names == ("north",)
    assert read_regions(path, info, field="code").names == ("7",)
    assert read_regions(path, info).names == ("1",)  # no 'name' attribute: feature numbers


def test_same_names_merge_and_outside_regions_drop(tmp_path):
    info = _info()
    a = shapely.box(500100, 5999500, 500500, 5999900)
    b = shapely.box(500600, 5999500, 500900, 5999900)
    far = shapely.box(700000, 5000000, 700100, 5000100)
    path = _write(tmp_path, "r.shp", {"name": ["x", "x", "far"], "geometry": [a, b, far]}, "EPSG:32633")
    regions = read_regions(path, info)
    assert regions.names == ("x",)
    assert regions.geometries[0].area == pytest.approx(a.area + b.area)


def test_other_crs_is_reprojected_with_curved_edges(tmp_path):
    info = _info(h=1000, w=1000)
    # a lon/lat box around the raster: its edges become curves in UTM; densified before reprojection
    box = shapely.box(14.5, 53.5, 15.5, 54.5)
    path = _write(tmp_path, "g.geojson", {"name": ["ll"], "geometry": [box]}, "EPSG:4326", driver="GeoJSON")
    regions = read_regions(path, info)
    assert regions.names == ("ll",)
    assert len(shapely.get_coordinates(regions.geometries[0])) >= 4


def test_no_crs_not_vector_and_points(tmp_path):
    info = _info()
    nocrs = _write(tmp_path, "n.gpkg", {"name": ["a"], "geometry": [shapely.box(500100, 5999500, 500500, 5999900)]}, None)
    with pytest.raises(InputError, match="no CRS"):
        read_regions(nocrs, info)
    junk = tmp_path / "j.geojson"
    junk.write_text("{ not json")
    with pytest.raises(InputError, match=r"j\.geojson: not a readable vector file"):
        read_regions(junk, info)
    pts = _write(tmp_path, "p.gpkg", {"name": ["a"], "geometry": [shapely.Point(500100, 5999500)]}, "EPSG:32633")
    with pytest.raises(InputError, match="regions must be polygons, found Point"):
        read_regions(pts, info)
    with pytest.raises(InputError, match="regions file not found"):
        read_regions(tmp_path / "none.gpkg", info)


def test_scene_region():
    info = _info()
    r = scene_region(info)
    assert r.names == ("scene",) and r.whole_scene
    assert r.geometries[0].equals(shapely.box(500000, 5999000, 502000, 6000000))


def test_geojson_without_crs_in_projected_metres_says_so(tmp_path):
    # RFC 7946 GeoJSON has no 'crs' member and is longitude/latitude; these numbers are UTM metres
    info = _info()
    ring = [[500100, 5999500], [500500, 5999500], [500500, 5999900], [500100, 5999900], [500100, 5999500]]
    path = tmp_path / "utm.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "a"}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    with pytest.raises(InputError) as err:
        read_regions(path, info)
    assert str(err.value) == (
        f"{path}: GeoJSON without a 'crs' member is read as longitude/latitude (RFC 7946), but its coordinates "
        "[500100, 5.9995e+06, 500500, 5.9999e+06] look like projected metres (write the file with its CRS, e.g. as a "
        "GeoPackage: `ogr2ogr -a_srs EPSG:32633 regions.gpkg utm.geojson`, or reproject it to EPSG:4326)"
    )
    # the same coordinates with their CRS are fine
    fixed = _write(tmp_path, "utm.gpkg", {"name": ["a"], "geometry": [shapely.Polygon(ring)]}, "EPSG:32633")
    assert read_regions(fixed, info).geometries[0].equals(shapely.Polygon(ring))


def test_degrees_crs_with_coordinates_out_of_range(tmp_path):
    info = _info()
    path = _write(tmp_path, "bad.gpkg", {"name": ["a"], "geometry": [shapely.box(500100, 5999500, 500500, 5999900)]}, "EPSG:4326")
    with pytest.raises(InputError, match=r"bad\.gpkg: its CRS EPSG:4326 is in degrees but its coordinates .* are not longitude/latitude \(set the CRS"):
        read_regions(path, info)
