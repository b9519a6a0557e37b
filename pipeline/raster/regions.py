"""Regions for the statistics: polygons from GeoJSON/GeoPackage/Shapefile in any CRS, reprojected to the raster's.

Features sharing a name are merged into one region; regions are clipped to the raster footprint
(statistics only ever see the part inside the scene) and the ones that miss the scene are dropped.
Without a regions file the whole scene is one region named ``scene``.

A file with several layers (a GeoPackage of ``country`` and ``districts``) needs the layer named
(``--region-layer``): taking the first one would silently compute statistics for another set of
polygons. On a geographic raster, a region also counts through its copies one turn (360 degrees)
east and west, so a scene across the antimeridian (longitudes beyond +/-180) meets the regions
written in -180..180 (RFC 7946 splits polygons there) on both sides, and the other way round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry.base import BaseGeometry

from pipeline.errors import InputError
from pipeline.raster.probe import RasterInfo

log = logging.getLogger(__name__)

SCENE = "scene"
DEFAULT_FIELD = "name"
DENSIFY_PARTS = 2000  # segments along the regions' extent before reprojection (curved edges stay curved)
# ... but none shorter than this (metres on the ground): Geod's own rounding on a district of 1 km^2 is ~1e-9 of
# its area; 0.7 m segments (1/2000 of a 1.5 km district) gave the same areas as 10 m ones to that noise, at 16x the cost
DENSIFY_MIN_M = 10.0
AREA_BATCH_VERTICES = 200_000  # dense vertices measured per call (~20 MB of temporaries)


LAYER_FIX = "pick the layer with --region-layer NAME"


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
        layer: the file's layer they came from (None: the file's only layer, or the whole scene).
        total_areas_m2: each region's whole ellipsoidal area in square metres, the part outside
            the scene included (:func:`ellipsoidal_area_m2` of the unclipped polygon); empty: the
            areas of ``geometries`` (the whole scene: its footprint).
    """

    names: tuple[str, ...]
    geometries: tuple[BaseGeometry, ...]
    whole_scene: bool = False
    source: str | None = None
    layer: str | None = None
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


def read_regions(path: str | Path, info: RasterInfo, *, field: str | None = None, layer: str | None = None) -> Regions:
    """Read region polygons, reproject them to ``info.crs`` and keep the ones that meet the raster.

    Args:
        path: a vector file GDAL/OGR reads (GeoJSON, GeoPackage, Shapefile, ...).
        info: the raster the regions are for.
        field: the attribute holding each region's name; None uses ``name`` when the file has it,
            else the feature number (``1``, ``2``, ...) with a warning (such names collide with
            other files' in one store).
        layer: the layer holding the regions; None for a file with one layer (a file with
            several is refused: see :func:`choose_layer`).

    On a geographic raster CRS each region also counts through its copies shifted by one turn
    (360 degrees) east and west (:func:`_with_turns`): the part of a scene beyond +/-180 meets the
    regions on the other side of the antimeridian. ``total_areas_m2`` is the region's own area,
    counted once.

    Raises:
        InputError: unreadable or empty file, several layers and no ``layer``, a ``layer`` the file
            does not have (the errors list its layers), no CRS, missing attribute (the error lists
            the available ones), non-polygon geometries.
        NoRegionInScene: no region meets the raster (an :class:`InputError` too).
    """
    gdf, names, geoms = _load(path, field, layer)
    where = str(path)
    _check_geographic_range(gdf, Path(path), info)
    geoms = _to_raster_crs(geoms, gdf.crs, info, where)
    merged: dict[str, list[BaseGeometry]] = {}
    for name, geom in zip(names, geoms):
        merged.setdefault(name, []).append(geom)
    outline = footprint(info)
    turn = _full_turn(info.crs)
    kept_names, kept_geoms, wholes = [], [], []
    for name, parts in merged.items():
        whole = shapely.union_all(parts)
        placed = _with_turns(whole, outline, turn) if turn else whole
        clipped = _polygonal(shapely.intersection(placed, outline))
        if clipped is None or clipped.is_empty or clipped.area == 0:
            log.info("%s: region %r does not meet %s; left out", where, name, info.path)
            continue
        kept_names.append(name)
        kept_geoms.append(clipped)
        wholes.append(whole)
    if not kept_names:
        raise NoRegionInScene(
            where,
            f"none of its {len(merged)} region(s) intersects the raster {info.path} (regions {_bounds_text(gdf.total_bounds)} in {gdf.crs.to_string()}, raster {_bounds_text(outline.bounds)} in {info.crs.to_string()})",
            "check that the regions and the raster cover the same place",
        )
    totals = tuple(ellipsoidal_areas_m2(wholes, info.crs).tolist())
    return Regions(names=tuple(kept_names), geometries=tuple(kept_geoms), source=where, layer=layer, total_areas_m2=totals)


def _full_turn(crs) -> float | None:
    """360 degrees in the units of a geographic ``crs`` (its longitude axis); None for a projected one."""
    from pyproj import CRS

    crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if not crs.is_geographic:
        return None
    return 2.0 * math.pi / float(crs.axis_info[0].unit_conversion_factor)


def _with_turns(geom: BaseGeometry, outline: BaseGeometry, turn: float) -> BaseGeometry:
    """``geom`` with its copies shifted by ``turn`` east and west that can meet ``outline`` (the
    same place on the globe under longitudes one turn apart); their union, so an overlap counts once."""
    gx0, _, gx1, _ = geom.bounds
    ox0, _, ox1, _ = outline.bounds
    copies = [shapely.affinity.translate(geom, xoff=k * turn) for k in (-1.0, 1.0) if gx0 + k * turn < ox1 and gx1 + k * turn > ox0]
    return shapely.union_all([geom, *copies]) if copies else geom


def ellipsoidal_area_m2(geom: BaseGeometry, crs) -> float:
    """Area in square metres on the ellipsoid of ``crs`` of a polygon given in ``crs`` coordinates
    (:func:`ellipsoidal_areas_m2` of one polygon)."""
    return float(ellipsoidal_areas_m2([geom], crs)[0])


def ellipsoidal_areas_m2(geoms: Sequence[BaseGeometry] | np.ndarray, crs) -> np.ndarray:
    """Areas in square metres on the ellipsoid of ``crs`` of polygons given in ``crs`` coordinates.

    Edges are straight lines in ``crs`` (as the pixel coverage sees them): each polygon is densified to
    1/``DENSIFY_PARTS`` of its extent but never below ``DENSIFY_MIN_M`` on the ground, moved to the CRS's
    own geographic coordinates and measured with ``pyproj.Geod`` (geodesic edges between the dense
    vertices). Polygons are densified and reprojected in groups (one call per group, memory bounded by
    ``AREA_BATCH_VERTICES``); ``Geod`` measures ring by ring.

    Args:
        geoms: (Multi)Polygons in ``crs`` units.
        crs: anything pyproj accepts (rasterio ``CRS``, WKT, ``"EPSG:32633"``).

    Returns:
        ``float64`` array, one area (m^2) per polygon.
    """
    crs = _pyproj_crs(crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs))
    geoms = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
    out = np.zeros(len(geoms))
    if not len(geoms):
        return out
    bounds = shapely.bounds(geoms)
    extent = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
    step = np.maximum(extent / DENSIFY_PARTS, _min_step(crs))
    # in groups of about AREA_BATCH_VERTICES dense vertices: one call each, memory bounded by the group
    dense_vertices = np.cumsum(shapely.get_num_coordinates(geoms) + shapely.length(geoms) / step)
    group = (dense_vertices // AREA_BATCH_VERTICES).astype(np.int64)
    for g in np.unique(group):
        at = np.flatnonzero(group == g)
        out[at] = _geodesic_areas(shapely.segmentize(geoms[at], step[at]), crs)
    return out


def _geodesic_areas(dense: np.ndarray, crs) -> np.ndarray:
    """``pyproj.Geod`` areas (m^2) of densified polygons in ``crs`` coordinates, moved to its geographic CRS."""
    if not crs.is_geographic:
        to_lonlat = _to_lonlat(crs.to_wkt())
        dense = shapely.transform(dense, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
    # each part counter-clockwise, holes clockwise: pyproj's signed areas then add up (exterior - holes)
    parts, part_of = shapely.get_parts(dense, return_index=True)
    parts = shapely.orient_polygons(parts, exterior_cw=False)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    xy, coord_of = shapely.get_coordinates(rings, return_index=True)
    ends = np.searchsorted(coord_of, np.arange(len(rings) + 1))
    geod = crs.get_geod()
    part_area = np.zeros(len(parts))
    for r in range(len(rings)):  # the exterior first, then its holes (as Geod.geometry_area_perimeter adds them)
        part_area[ring_of[r]] += geod.polygon_area_perimeter(xy[ends[r] : ends[r + 1], 0], xy[ends[r] : ends[r + 1], 1])[0]
    out = np.zeros(len(dense))
    for i, area in zip(part_of.tolist(), np.abs(part_area).tolist()):
        out[i] += area
    return out


def _min_step(crs) -> float:
    """``DENSIFY_MIN_M`` in the units of ``crs`` (degrees: on a sphere of the ellipsoid's semi-major axis)."""
    unit = float(crs.axis_info[0].unit_conversion_factor)  # metres, or radians, per unit
    if crs.is_geographic:
        return DENSIFY_MIN_M / float(crs.ellipsoid.semi_major_metre) / unit
    return DENSIFY_MIN_M / unit


@lru_cache(maxsize=16)
def _pyproj_crs(wkt_or_code: str):
    from pyproj import CRS

    return CRS.from_user_input(wkt_or_code)


@lru_cache(maxsize=16)
def _to_lonlat(wkt: str):
    from pyproj import Transformer

    crs = _pyproj_crs(wkt)
    return Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)


def check_regions_file(path: str | Path, *, field: str | None = None, layer: str | None = None) -> int:
    """Check a regions file on its own, before any raster is read: readable, one layer or the
    ``layer`` named, with a CRS, polygon features and the ``field`` attribute (see
    :func:`read_regions`). Returns the number of regions.

    Raises:
        InputError: the same problems :func:`read_regions` reports, except those that need the raster.
    """
    _, names, _ = _load(path, field, layer)
    return len(set(names))


def region_layers(path: str | Path) -> tuple[str, ...]:
    """The layers of a vector file, in the file's order.

    Raises:
        InputError: no such file, or not a readable vector file.
    """
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise InputError(path, "regions file not found", _not_found_fix(path))
    try:
        return tuple(str(name) for name in pyogrio.list_layers(path)[:, 0])
    except Exception as exc:  # pyogrio raises DataSourceError and friends; all mean "cannot read"
        raise InputError(path, f"not a readable vector file ({str(exc).splitlines()[0][:200]})", "give a GeoJSON, GeoPackage or Shapefile") from exc


def choose_layer(path: str | Path, layer: str | None) -> str | None:
    """The layer of ``path`` to read the regions from: ``layer`` when the file has it; None (the
    only layer) when ``layer`` is None and the file has one layer.

    Raises:
        InputError: ``layer`` is not in the file, or the file has several layers and ``layer`` is
            None (taking the first would silently measure other polygons); both list the layers.
    """
    layers = region_layers(path)
    listed = ", ".join(layers) or "none"
    if layer is not None and layer not in layers:
        raise InputError(path, f"no layer '{layer}' (layers: {listed})", LAYER_FIX)
    if layer is None and len(layers) > 1:
        raise InputError(path, f"{len(layers)} layers ({listed}) and none named to take the regions from", LAYER_FIX)
    return layer


def _not_found_fix(path: Path) -> str:
    if "|layername=" in path.name:  # GDAL's and QGIS's 'file.gpkg|layername=districts' is no file name
        file, layer = str(path).split("|layername=", 1)
        return f"give the file and its layer apart: --regions {file} --region-layer {layer}"
    return "check the --regions path"


def _load(path: str | Path, field: str | None, layer: str | None = None):
    """The regions' table, names and (valid, polygonal) geometries in the file's CRS."""
    gdf = _read_file(Path(path), layer)
    where = str(path) if layer is None else f"{path} (layer '{layer}')"
    if gdf.crs is None:
        raise InputError(where, "the regions have no CRS", "set one, e.g. `ogr2ogr -a_srs EPSG:4326 out.gpkg in.shp`")
    names = _names(gdf, where, field)
    geoms = shapely.make_valid(np.asarray(gdf.geometry.values, dtype=object))
    geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    if any(g is None for g in geoms):
        kinds = sorted({t for t, g in zip(gdf.geom_type, geoms) if g is None})
        raise InputError(where, f"regions must be polygons, found {', '.join(map(str, kinds))}", "give (multi)polygon features")
    return gdf, names, geoms


def _read_file(path: Path, layer: str | None):
    import geopandas as gpd

    layer = choose_layer(path, layer)
    try:
        gdf = gpd.read_file(path, engine="pyogrio", layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError and friends; all mean "cannot read"
        raise InputError(path, f"not a readable vector file ({str(exc).splitlines()[0][:200]})", "give a GeoJSON, GeoPackage or Shapefile") from exc
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if gdf.empty:
        where = path if layer is None else f"{path} (layer '{layer}')"
        raise InputError(where, "no features with a geometry", "give a file with region polygons")
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
        raw = json.loads(path.read_text(encoding="utf-8"))
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
    if dst.is_geographic:
        out = _unwrapped(out, 2.0 * math.pi / float(dst.axis_info[0].unit_conversion_factor))
    return shapely.make_valid(out)


def _unwrapped(geoms: np.ndarray, turn: float) -> np.ndarray:
    """Geometries reprojected to longitude/latitude with each polygon's longitudes made continuous:
    PROJ returns -180..180, so a polygon across the antimeridian (given in a projected CRS such as
    EPSG:3832 or UTM 60) comes back with vertices jumping from +179.9 to -179.9 and would span the
    globe. Its densified outline never steps by half a turn, so a step that does is such a jump,
    undone by ``np.unwrap`` over the polygon's rings (it then lies across +/-180, where
    :func:`_with_turns` finds it). A polygon around a pole, whose ring would not close, is left as is."""
    bounds = shapely.bounds(geoms)
    out = geoms.copy()
    for i in np.flatnonzero(bounds[:, 2] - bounds[:, 0] > turn / 2):
        parts = [_unwrapped_polygon(p, turn) for p in shapely.get_parts(geoms[i])]
        out[i] = parts[0] if len(parts) == 1 else shapely.multipolygons(parts)
    return out


def _unwrapped_polygon(polygon: BaseGeometry, turn: float) -> BaseGeometry:
    xmin, _, xmax, _ = polygon.bounds
    if xmax - xmin <= turn / 2:
        return polygon
    rings = [np.asarray(r.coords) for r in (polygon.exterior, *polygon.interiors)]
    x = np.unwrap(np.concatenate([r[:, 0] for r in rings]), period=turn)  # holes continue from the shell: they move with it
    moved, start = [], 0
    for r in rings:
        xr = x[start : start + len(r)]
        start += len(r)
        if xr[0] != xr[-1]:  # around a pole: no jump to undo
            return polygon
        moved.append(np.column_stack([xr, r[:, 1]]))
    return shapely.Polygon(moved[0], moved[1:])


def _bounds_text(bounds) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in bounds) + "]"
