"""Regions for the statistics: polygons from GeoJSON/GeoPackage/Shapefile in any CRS, reprojected to the raster's.

Features sharing a name are merged into one region; regions are clipped to the raster footprint
(statistics only ever see the part inside the scene) and the ones that miss the scene are dropped.
Without a regions file the whole scene is one region named ``scene``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from pipeline.errors import InputError
from pipeline.raster.ingest import RasterInfo

log = logging.getLogger(__name__)

SCENE = "scene"
DEFAULT_FIELD = "name"
DENSIFY_PARTS = 2000  # segments along the regions' extent before reprojection (curved edges stay curved)


class NoRegionInScene(InputError):
    """None of a regions file's polygons meets the scene (the scene is still segmented, without statistics)."""


@dataclass(frozen=True)
class Regions:
    """Named polygons in the raster's CRS, clipped to the raster footprint.

    Attributes:
        names: one name per region (unique).
        geometries: (Multi)Polygons in the raster CRS, same order as ``names``.
        whole_scene: True for the implicit single region covering the whole raster.
        source: the file they came from (None for the whole scene).
        total_areas_m2: each region's whole ellipsoidal area in square metres, the part outside
            the scene included (:func:`ellipsoidal_area_m2` of the unclipped polygon); empty: the
            areas of ``geometries`` (the whole scene: its footprint).
    """

    names: tuple[str, ...]
    geometries: tuple[BaseGeometry, ...]
    whole_scene: bool = False
    source: str | None = None
    total_areas_m2: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.names)


def footprint(info: RasterInfo) -> BaseGeometry:
    """The raster's outline in its CRS (a rectangle, or a parallelogram for rotated transforms)."""
    w, h = info.width, info.height
    corners = [info.transform @ (c, r) for c, r in ((0, 0), (w, 0), (w, h), (0, h))]
    return shapely.Polygon(corners).normalize()


def scene_region(info: RasterInfo) -> Regions:
    """One region named ``scene`` covering the whole raster."""
    return Regions(names=(SCENE,), geometries=(footprint(info),), whole_scene=True)


def read_regions(path: str | Path, info: RasterInfo, *, field: str | None = None) -> Regions:
    """Read region polygons, reproject them to ``info.crs`` and keep the ones that meet the raster.

    Args:
        path: a vector file GDAL/OGR reads (GeoJSON, GeoPackage, Shapefile, ...), first layer.
        info: the raster the regions are for.
        field: the attribute holding each region's name; None uses ``name`` when the file has it,
            else the feature number (``1``, ``2``, ...) with a warning (such names collide with
            other files' in one store).

    Raises:
        InputError: unreadable or empty file, no CRS, missing attribute (the error lists the
            available ones), non-polygon geometries.
        NoRegionInScene: no region meets the raster (an :class:`InputError` too).
    """
    gdf, names, geoms = _load(path, field)
    where = str(path)
    _check_geographic_range(gdf, Path(path), info)
    geoms = _to_raster_crs(geoms, gdf.crs, info, where)
    merged: dict[str, list[BaseGeometry]] = {}
    for name, geom in zip(names, geoms):
        merged.setdefault(name, []).append(geom)
    outline = footprint(info)
    kept_names, kept_geoms, totals = [], [], []
    for name, parts in merged.items():
        whole = shapely.union_all(parts)
        clipped = _polygonal(shapely.intersection(whole, outline))
        if clipped is None or clipped.is_empty or clipped.area == 0:
            log.info("%s: region %r does not meet %s; left out", where, name, info.path)
            continue
        kept_names.append(name)
        kept_geoms.append(clipped)
        totals.append(ellipsoidal_area_m2(whole, info.crs))
    if not kept_names:
        raise NoRegionInScene(
            where,
            f"none of its {len(merged)} region(s) intersects the raster {info.path} (regions {_bounds_text(gdf.total_bounds)} in {gdf.crs.to_string()}, raster {_bounds_text(outline.bounds)} in {info.crs.to_string()})",
            "check that the regions and the raster cover the same place",
        )
    return Regions(names=tuple(kept_names), geometries=tuple(kept_geoms), source=where, total_areas_m2=tuple(totals))


def ellipsoidal_area_m2(geom: BaseGeometry, crs) -> float:
    """Area in square metres on the ellipsoid of ``crs`` of a polygon given in ``crs`` coordinates.

    Edges are straight lines in ``crs`` (as the pixel coverage sees them): the polygon is densified
    to 1/``DENSIFY_PARTS`` of its extent, moved to the CRS's own geographic coordinates and measured
    with ``pyproj.Geod`` (geodesic edges between the dense vertices).

    Args:
        geom: a (Multi)Polygon in ``crs`` units.
        crs: anything pyproj accepts (rasterio ``CRS``, WKT, ``"EPSG:32633"``).
    """
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    xmin, ymin, xmax, ymax = geom.bounds
    step = max(xmax - xmin, ymax - ymin) / DENSIFY_PARTS
    dense = shapely.segmentize(geom, step) if step > 0 else geom
    if not crs.is_geographic:
        to_lonlat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        dense = shapely.transform(dense, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
    geod = crs.get_geod()
    # each part counter-clockwise, holes clockwise: pyproj's signed areas then add up (exterior - holes)
    return float(sum(abs(geod.geometry_area_perimeter(orient(p, 1.0))[0]) for p in shapely.get_parts(dense)))


def check_regions_file(path: str | Path, *, field: str | None = None) -> int:
    """Check a regions file on its own, before any raster is read: readable, with a CRS, polygon
    features and the ``field`` attribute (see :func:`read_regions`). Returns the number of regions.

    Raises:
        InputError: the same problems :func:`read_regions` reports, except those that need the raster.
    """
    _, names, _ = _load(path, field)
    return len(set(names))


def _load(path: str | Path, field: str | None):
    """The regions' table, names and (valid, polygonal) geometries in the file's CRS."""
    gdf = _read_file(Path(path))
    where = str(path)
    if gdf.crs is None:
        raise InputError(where, "the regions have no CRS", "set one, e.g. `ogr2ogr -a_srs EPSG:4326 out.gpkg in.shp`")
    names = _names(gdf, where, field)
    geoms = shapely.make_valid(np.asarray(gdf.geometry.values, dtype=object))
    geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    if any(g is None for g in geoms):
        kinds = sorted({t for t, g in zip(gdf.geom_type, geoms) if g is None})
        raise InputError(where, f"regions must be polygons, found {', '.join(map(str, kinds))}", "give (multi)polygon features")
    return gdf, names, geoms


def _read_file(path: Path):
    import geopandas as gpd

    if not path.exists():
        raise InputError(path, "regions file not found", "check the --regions path")
    try:
        gdf = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio raises DataSourceError and friends; all mean "cannot read"
        raise InputError(path, f"not a readable vector file ({str(exc).splitlines()[0][:200]})", "give a GeoJSON, GeoPackage or Shapefile") from exc
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if gdf.empty:
        raise InputError(path, "no features with a geometry", "give a file with region polygons")
    return gdf


def _names(gdf, where: str, field: str | None) -> list[str]:
    attributes = [c for c in gdf.columns if c != gdf.geometry.name]
    if field is None:
        if DEFAULT_FIELD in attributes:
            field = DEFAULT_FIELD
        else:
            _warn_numbered(where, ", ".join(attributes) or "none")
            return [str(i) for i in range(1, len(gdf) + 1)]
    if field not in attributes:
        listed = ", ".join(attributes) or "none"
        raise InputError(where, f"no attribute '{field}' (available attributes: {listed})", "pick one with --region-field")
    values = gdf[field]
    if values.isna().any():
        raise InputError(where, f"{int(values.isna().sum())} feature(s) have no value in '{field}'", "fill it in or pick another attribute with --region-field")
    return [str(v) for v in values]


@lru_cache(maxsize=64)
def _warn_numbered(where: str, attributes: str) -> None:
    """Warn once per file and process (the command line checks the file, then reads it per scene)."""
    log.warning(
        "%s: no '%s' attribute and no --region-field: its regions are named by feature number (1, 2, ...), "
        "which the regions of other files share in stats.zarr; pick a naming attribute with --region-field (attributes: %s)",
        where, DEFAULT_FIELD, attributes,
    )


def _polygonal(geom: BaseGeometry | None) -> BaseGeometry | None:
    """The polygonal part of a geometry (collections from make_valid/intersection), None if there is none."""
    if geom is None or geom.is_empty:
        return geom
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    if geom.geom_type == "GeometryCollection":
        parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
        return shapely.union_all(parts) if parts else None
    return None


def _check_geographic_range(gdf, path: Path, info: RasterInfo) -> None:
    """Refuse longitude/latitude regions whose coordinates cannot be degrees (most often projected
    metres in a GeoJSON file without a ``crs`` member, which GDAL reads as WGS 84)."""
    if not gdf.crs.is_geographic:
        return
    xmin, ymin, xmax, ymax = gdf.total_bounds
    if xmin >= -180 and xmax <= 360 and ymin >= -90 and ymax <= 90:
        return
    seen = f"coordinates {_bounds_text(gdf.total_bounds)}"
    # when the numbers fall on the raster in its own CRS, that is most likely the regions' CRS too
    code = info.crs.to_string() if shapely.box(xmin, ymin, xmax, ymax).intersects(footprint(info)) else "<code>"
    assign = f"`ogr2ogr -a_srs {code} regions.gpkg {path.name}`"
    if _geojson_without_crs(path):
        raise InputError(
            path,
            f"GeoJSON without a 'crs' member is read as longitude/latitude (RFC 7946), but its {seen} look like projected metres",
            f"write the file with its CRS, e.g. as a GeoPackage: {assign}, or reproject it to EPSG:4326",
        )
    raise InputError(path, f"its CRS {gdf.crs.to_string()} is in degrees but its {seen} are not longitude/latitude", f"set the CRS the coordinates are in, e.g. {assign}")


def _geojson_without_crs(path: Path) -> bool:
    import json

    if path.suffix.lower() not in (".geojson", ".json"):
        return False
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "crs" not in raw


def _to_raster_crs(geoms: np.ndarray, crs, info: RasterInfo, where: str) -> np.ndarray:
    from pyproj import CRS, Transformer

    src = CRS.from_user_input(crs)
    dst = CRS.from_wkt(info.crs.to_wkt())
    if src.equals(dst):
        return geoms
    xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
    step = max(xmax - xmin, ymax - ymin) / DENSIFY_PARTS
    if step > 0:
        geoms = shapely.segmentize(geoms, step)
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    with np.errstate(all="ignore"):
        out = shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    if not np.all(np.isfinite(shapely.total_bounds(out))):
        raise InputError(where, f"regions cannot be reprojected to the raster CRS {info.crs.to_string()} (they lie outside its valid area)", "clip the regions to the raster's area")
    return shapely.make_valid(out)


def _bounds_text(bounds) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in bounds) + "]"
