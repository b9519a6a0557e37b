"""Region areas on a geographic grid: a pixel cut by a region boundary counts the ellipsoidal area of the part inside.

The covered *fraction* exactextract gives is planar in longitude/latitude, but the ellipsoid's area
element (``M N cos(phi)``) changes across a pixel's height: at 60 N by 1.8 % over a 0.5-degree pixel.
Weighting a cut pixel's exact area by that planar fraction made a region's area off by 1e-5 .. 1e-3 on
coarse grids (the Bahamas on a 0.25-degree grid: -2.9e-5), so a region wholly inside the scene had
``region_area_m2 != region_total_area_m2``. Reference: ``pyproj.Geod`` on the region densified along
its (straight in longitude/latitude) edges.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS as RioCRS
from shapely.geometry.polygon import orient

from models.spec import ClassInfo
from pipeline.raster.ingest import RasterInfo
from pipeline.raster.regions import Regions
from pipeline.raster.stats import compute_stats

CLASSES = (ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#ffffff"))


def _geod_area(geom) -> float:
    geod = Geod(ellps="WGS84")
    dense = shapely.segmentize(geom, 0.0005)
    return sum(abs(geod.geometry_area_perimeter(orient(p, 1.0))[0]) for p in shapely.get_parts(dense))


@pytest.mark.parametrize("pixel", [0.5, 0.1])
def test_cut_pixels_count_their_ellipsoidal_part(pixel):
    # a slanted quadrilateral with a hole near 60 N, wholly inside a north-up EPSG:4326 grid
    shell = [(20.13, 58.07), (27.91, 59.33), (26.52, 64.88), (21.2, 63.1)]
    hole = [(23.05, 60.41), (24.93, 60.77), (24.2, 62.02)]
    region = shapely.Polygon(shell, [hole])
    t = Affine(pixel, 0, 19.0, 0, -pixel, 66.0)
    h, w = round(9 / pixel), round(10 / pixel)
    info = RasterInfo("geo.tif", w, h, 1, "uint8", RioCRS.from_epsg(4326), t, None, ("b",), (1,))
    labels = (np.add.outer(np.arange(h), np.arange(w)) % 3 == 0).astype(np.uint8)  # both classes along every boundary
    regions = Regions(names=("R",), geometries=(region,), total_areas_m2=(_geod_area(region),))
    ds = compute_stats(labels, None, info, regions, CLASSES, block=64)
    inside = float(ds["region_area_m2"].sel(region="R"))
    assert inside == pytest.approx(_geod_area(region), rel=1e-8)
    # and per class: the parts of class-b pixels inside the region, each measured on the ellipsoid
    b_pixels = [shapely.box(*(t @ (c, r + 1)), *(t @ (c + 1, r))) for r, c in zip(*np.nonzero(labels == 1))]
    b_inside = shapely.intersection(shapely.union_all(b_pixels), region)
    assert float(ds["area_m2"].sel(region="R", **{"class": "b"})) == pytest.approx(_geod_area(b_inside), rel=1e-8)


@pytest.mark.parametrize(
    "transform",
    [Affine(0.3, 0, 19.0, 0, 0.3, 57.0), Affine(-0.25, 0, 29.5, 0, 0.25, 57.5)],
    ids=["south-up", "east-to-west-south-up"],
)
def test_flipped_geographic_grids_place_cut_pixels_right(transform):
    # exactextract counts rows from the top and columns from the west: the cut pixels' parts must be
    # measured at the pixels the flipped cell ids name
    region = shapely.Polygon([(20.13, 58.07), (27.91, 59.33), (26.52, 64.88), (21.2, 63.1)], [[(23.05, 60.41), (24.93, 60.77), (24.2, 62.02)]])
    h = w = 60
    info = RasterInfo("geo.tif", w, h, 1, "uint8", RioCRS.from_epsg(4326), transform, None, ("b",), (1,))
    labels = np.zeros((h, w), np.uint8)
    ds = compute_stats(labels, None, info, Regions(names=("R",), geometries=(region,), total_areas_m2=(1.0,)), CLASSES, block=16)
    assert float(ds["region_area_m2"].sel(region="R")) == pytest.approx(_geod_area(region), rel=1e-8)
