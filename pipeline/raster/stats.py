"""Area per region and class, block by block, and the ``stats.zarr`` store that collects it run after run.

A pixel cut by a region boundary counts by the fraction of it the region covers (exactextract's
coverage fraction, exact for polygons); its area is its true ellipsoidal area
(:func:`pipeline.raster.areas.pixel_area_m2`). On a geographic grid the area of a cut pixel's part is
measured on the ellipsoid itself (:func:`_ellipsoidal_cover`): the planar fraction in degrees is not the
share of the pixel's area there. exactextract takes north-up grids only, so on a
rotated (or sheared) grid the regions are mapped into the block's own pixel coordinates, where the
grid is the unit square grid: an affine map keeps ratios of areas, so the fractions are the same
exact ones (:func:`_pixel_space_coverage`).

The store (``DIR/stats.zarr``) has dimensions ``(time, scene, region, class)``; appending the same
``time`` and ``scene`` again replaces that entry, unless another input made it, and the classes keep
one table (both rules in :mod:`pipeline.raster.entries`). Each entry records what made it
(:mod:`pipeline.raster.provenance`). Each append builds a new store under a temporary name
and swaps it in under a lock, so readers never see a half-written store: an entry of a scene already
in the store, at an existing night or after the last one, as a hard-linked copy of the old store with
only that night's chunks written (:func:`_append_fast`); any other by rewriting the whole store, streamed:
the old store read chunk by chunk as dask arrays (:func:`~pipeline.stats_store.open_stats_lazy`) and the new one
written a chunk at a time (:func:`~pipeline.stats_store.replace_store`), in memory bounded by a chunk, not the store.
"""

from __future__ import annotations

import errno
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely
import shapely.affinity
import xarray as xr
from affine import Affine

from models.spec import ClassInfo
from pipeline.errors import InputError
from pipeline.raster.areas import geographic_polygon_areas, is_geographic, pixel_area_m2
from pipeline.raster.coverage import BlockCoverage, polygon_coverage
from pipeline.raster.entries import (
    check_class_table,
    check_replacement,
    class_order,
    class_table,
)
from pipeline.raster.ingest import tiles
from pipeline.raster.probe import RasterInfo
from pipeline.raster.provenance import PROVENANCE_VARS, Provenance
from pipeline.raster.regions import Regions, ellipsoidal_areas_m2
from pipeline.stats_store import (
    EVERY_CHUNK_ATTR,
    TIME_DIM,
    Unchanged,
    check_chunk_sizes,
    damaged,
    linked_copy,
    lock,
    open_stats,
    open_stats_lazy,
    recover,
    replace_store,
    store_chunks,
    update_store,
)

log = logging.getLogger(__name__)

Coverage = tuple[int, np.ndarray | None, np.ndarray | None]  # region index, flat cell ids, coverage fractions
CoverageMethod = Literal["edges", "exactextract"]


def compute_stats(
    labels: Any,
    mask: Any | None,
    info: RasterInfo,
    regions: Regions,
    classes: Sequence[ClassInfo],
    *,
    block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    coverage: CoverageMethod = "edges",
) -> xr.Dataset:
    """Area, pixel count and share per region and class, plus nodata area per region.

    Args:
        labels: class ids ``(Y, X)`` (zarr array or numpy), read one block at a time.
        mask: valid pixels ``(Y, X)`` (True = valid) or None (all valid). Invalid pixels count as nodata.
        info: the raster (grid and CRS for the pixel areas).
        regions: polygons in the raster CRS (see :mod:`pipeline.raster.regions`).
        classes: the model's classes; label values that are no class id are ignored (logged).
        block: block size in pixels (default: the labels' chunk size, else 1024).
        progress: optional ``callable(blocks_done, blocks_total)``.
        coverage: how the share of each pixel inside a region is found: ``edges``
            (:func:`~pipeline.raster.coverage.polygon_coverage`, from the regions' edges; a block where regions
            overlap, and invalid polygons, take exactextract) or ``exactextract`` for every block. Both are
            exact; ``edges`` costs what the edges cost, exactextract what each region's bounding box does.

    Returns:
        Dataset with dims ``region`` and ``class`` (class names; ``class_id`` and ``class_color``
        as coordinates): ``area_m2``, ``area_ha``, ``pixel_count`` (fractional pixels), ``share``
        (of the region's valid area), ``nodata_area_m2``, ``nodata_pixel_count`` and
        ``region_area_m2`` (the region's area inside the scene, nodata included) and
        ``region_total_area_m2`` (the whole region's ellipsoidal area, outside the scene too; for
        the whole scene, its ``region_area_m2``). The fraction of a region observed (valid pixels)
        is ``(region_area_m2 - nodata_area_m2) / region_total_area_m2``.
    """
    if tuple(labels.shape) != info.shape:
        raise InputError(info.path, f"labels shape {tuple(labels.shape)} differs from the raster's {info.shape}", "compute stats on the input grid")
    block = block or _chunk_size(labels)
    k = len(classes)
    lut = _class_lookup(classes)
    n_regions = len(regions)
    area = np.zeros((n_regions, k + 2))  # classes, then nodata, then unknown label values
    pixels = np.zeros((n_regions, k + 2))
    tree = shapely.STRtree(regions.geometries)
    shapely.prepare(list(regions.geometries))
    grid = list(tiles(info.height, info.width, block))
    geographic = is_geographic(info.crs)
    if coverage == "edges" and not regions.whole_scene and not np.all(shapely.is_valid(np.asarray(regions.geometries, dtype=object))):
        log.debug("%s: invalid region polygons; their coverage comes from exactextract", info.path)
        coverage = "exactextract"
    for i, (rows, cols) in enumerate(grid):
        lab = np.asarray(labels[rows, cols])
        bucket = _buckets(lab, lut)
        if mask is not None:
            np.putmask(bucket, ~np.asarray(mask[rows, cols], dtype=bool), k)
        bucket = bucket.ravel()
        px_area = pixel_area_m2(info.crs, info.transform, rows, cols).ravel()
        block_sums = _BlockSums(area, pixels, bucket, px_area, k, info, rows, cols, geographic, regions)
        if coverage == "edges" and not regions.whole_scene:
            whole, partial, window, shape = _meeting(regions, tree, info, rows, cols)
            for j in whole:
                block_sums.add(j, None, None)
            if partial and not block_sums.add_edges(partial, polygon_coverage([regions.geometries[j] for j in partial], window, shape)):
                log.debug("%s: regions overlap in block %s, %s; its coverage comes from exactextract", info.path, rows, cols)
                for j, cells, cover in _partial_coverage(regions, partial, window, shape, info):
                    block_sums.add(j, cells, cover)
        else:
            for j, cells, cover in block_coverage(regions, tree, info, rows, cols):
                block_sums.add(j, cells, cover)
        if progress is not None:
            progress(i + 1, len(grid))
    if pixels[:, k + 1].sum() > 0:
        log.warning("%s: %.0f valid pixels carry label values that are no class id; left out of the statistics", info.path, pixels[:, k + 1].sum())
    return _dataset(regions, classes, area, pixels, _total_areas(regions, info, area[:, : k + 1].sum(axis=1)))


def _total_areas(regions: Regions, info: RasterInfo, inside: np.ndarray) -> np.ndarray:
    """Each region's whole area (m^2): the whole scene's is its area inside the scene (``inside``, the
    same pixel sum, so ``observed`` is exactly its valid fraction); a file's, its unclipped polygon's."""
    if regions.whole_scene:
        return inside.copy()
    if regions.total_areas_m2:
        return np.asarray(regions.total_areas_m2, dtype=np.float64)
    return ellipsoidal_areas_m2(regions.geometries, info.crs)


def _chunk_size(labels: Any) -> int:
    chunks = getattr(labels, "chunks", None)
    if chunks and isinstance(chunks[0], int):
        return int(chunks[0])
    return 1024


def _class_lookup(classes: Sequence[ClassInfo]) -> np.ndarray:
    """Table label value -> class index (0..K-1); every other value -> K + 1 (unknown). The last
    entry catches all values beyond the table (see :func:`_buckets`)."""
    # uint8 buckets while they fit: the per-pixel lookup writes 1 byte instead of 8 (bincount casts once)
    dtype = np.uint8 if len(classes) + 2 <= 256 else np.int64
    lut = np.full(max(256, max(c.id for c in classes) + 2), len(classes) + 1, dtype=dtype)
    for i, c in enumerate(classes):
        lut[c.id] = i
    return lut


def _buckets(lab: np.ndarray, lut: np.ndarray) -> np.ndarray:
    if lab.dtype == np.uint8:
        return np.take(lut, lab)  # 2x faster than lut[lab] here
    return lut[np.clip(lab.astype(np.int64), 0, len(lut) - 1)]


def block_coverage(regions: Regions, tree: shapely.STRtree, info: RasterInfo, rows: slice, cols: slice) -> Iterator[Coverage]:
    """For each region meeting the block: its index and the covered cells (flat, row-major in the
    block) with their coverage fractions in (0, 1]; ``(j, None, None)`` when it covers the whole block.
    The fractions are exactextract's (the reference for :func:`~pipeline.raster.coverage.polygon_coverage`)."""
    if regions.whole_scene:
        yield 0, None, None
        return
    whole, partial, window, shape = _meeting(regions, tree, info, rows, cols)
    for j in whole:
        yield j, None, None
    if partial:
        yield from _partial_coverage(regions, partial, window, shape, info)


def _meeting(regions: Regions, tree: shapely.STRtree, info: RasterInfo, rows: slice, cols: slice) -> tuple[list[int], list[int], Affine, tuple[int, int]]:
    """The regions meeting a block: those covering it whole, those covering part of it; the block's
    transform and shape ``(rows, cols)``."""
    window = info.transform @ Affine.translation(cols.start, rows.start)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    box = shapely.Polygon([window @ (c, r) for c, r in ((0, 0), (w, 0), (w, h), (0, h))])
    whole, partial = [], []
    for j in tree.query(box, predicate="intersects"):
        (whole if regions.geometries[j].covers(box) else partial).append(int(j))
    return whole, partial, window, (h, w)


def _partial_coverage(regions: Regions, partial: list[int], window: Affine, shape: tuple[int, int], info: RasterInfo) -> Iterator[Coverage]:
    """exactextract's coverage of the regions ``partial`` over the block ``window``, ``shape``."""
    if window.b == 0 and window.d == 0:
        yield from _exact_coverage(regions, partial, window, shape, info)
    else:
        yield from _pixel_space_coverage(regions, partial, window, shape)


@dataclass
class _BlockSums:
    """Adds one block's pixels to ``area`` and ``pixels`` (per region, bucket: classes, nodata, unknown)."""

    area: np.ndarray
    pixels: np.ndarray
    bucket: np.ndarray  # flat (Y * X): each pixel's bucket
    px_area: np.ndarray  # flat: each pixel's ellipsoidal area (m^2)
    k: int
    info: RasterInfo
    rows: slice
    cols: slice
    geographic: bool
    regions: Regions

    def add(self, j: int, cells: np.ndarray | None, cover: np.ndarray | None) -> None:
        """Region ``j``'s pixels: all (``cells`` None) or ``cells`` (flat) with coverage ``cover``."""
        k = self.k
        if cells is None:
            self.area[j] += np.bincount(self.bucket, weights=self.px_area, minlength=k + 2)
            self.pixels[j] += np.bincount(self.bucket, minlength=k + 2)
            return
        b = self.bucket[cells]
        share = self._share(j, cells, cover)
        self.area[j] += np.bincount(b, weights=self.px_area[cells] * share, minlength=k + 2)
        self.pixels[j] += np.bincount(b, weights=cover, minlength=k + 2)

    def add_edges(self, partial: list[int], cov: BlockCoverage | None) -> bool:
        """The regions ``partial`` with their coverage from :func:`polygon_coverage` (False: none came)."""
        if cov is None:
            return False
        n, size = len(self.area), self.k + 2
        index = np.asarray(partial + [n], dtype=np.int64)  # local polygon -> region; owner -1 -> a bin left out
        key = index[cov.owner.ravel()] * size + self.bucket
        self.area += np.bincount(key, weights=self.px_area, minlength=(n + 1) * size)[: n * size].reshape(n, size)
        self.pixels += np.bincount(key, minlength=(n + 1) * size)[: n * size].reshape(n, size)
        if not cov.cell.size:
            return True
        cells, cover = cov.cell, cov.cover
        share = cover
        if self.geographic:  # entries are sorted by polygon
            starts = np.flatnonzero(np.r_[True, cov.polygon[1:] != cov.polygon[:-1]])
            bounds = np.r_[starts, len(cells)]
            share = np.concatenate([self._share(partial[cov.polygon[a]], cells[a:b], cover[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
        key = index[cov.polygon] * size + self.bucket[cells]
        self.area += np.bincount(key, weights=self.px_area[cells] * share, minlength=n * size).reshape(n, size)
        self.pixels += np.bincount(key, weights=cover, minlength=n * size).reshape(n, size)
        return True

    def _share(self, j: int, cells: np.ndarray, cover: np.ndarray) -> np.ndarray:
        # a cut pixel's area is its part inside the region: on a geographic grid not its planar fraction
        if not self.geographic:
            return cover
        return _ellipsoidal_cover(self.regions.geometries[j], self.info.transform, self.rows, self.cols, cells, cover, self.info.crs)


def _ellipsoidal_cover(geom, transform: Affine, rows: slice, cols: slice, cells: np.ndarray, cover: np.ndarray, crs) -> np.ndarray:
    """On a geographic grid, the share of each cut pixel's *ellipsoidal* area inside ``geom``, for the
    block ``rows, cols`` and its covered ``cells`` (flat, row-major in the block) with exactextract's ``cover``.

    exactextract's fraction is the share of the pixel's area in longitude/latitude, but the ellipsoid's
    area element (``M N cos(phi)``) changes across a pixel (at 60 N by 1.8 % over half a degree), so the
    planar share of a cut pixel is not its share of the pixel's true area: the Bahamas on a 0.25-degree
    grid came out 2.9e-5 too small. Each cut pixel's part inside ``geom`` is measured in equal-area
    coordinates (:func:`~pipeline.raster.areas.geographic_polygon_areas`) instead; whole pixels keep 1.
    ``pixel_count`` keeps exactextract's fractions (a share of the pixel grid).
    """
    cut = np.flatnonzero(cover < 1.0)
    if cut.size == 0:
        return cover
    window = transform @ Affine.translation(cols.start, rows.start)
    r, c = np.divmod(cells[cut], cols.stop - cols.start)
    corners = [window @ (c + dc, r + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0))]
    rings = np.stack([np.column_stack(xy) for xy in corners], axis=1)  # (n, 5, 2)
    pixels = shapely.polygons(rings)
    local = shapely.intersection(geom, shapely.box(*shapely.total_bounds(pixels)))  # a country's outline, cut to the block once
    inside = geographic_polygon_areas(shapely.intersection(pixels, local), crs)
    whole = geographic_polygon_areas(pixels, crs)
    out = cover.copy()
    out[cut] = np.clip(inside / whole, 0.0, 1.0)
    return out


def _exact_coverage(regions: Regions, indexes: list[int], window, shape: tuple[int, int], info: RasterInfo) -> Iterator[Coverage]:
    import geopandas as gpd
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    h, w = shape
    x0, x1 = sorted((window.c, window.c + window.a * w))
    y0, y1 = sorted((window.f, window.f + window.e * h))
    wkt = info.crs.to_wkt()
    source = NumPyRasterSource(np.zeros(shape, dtype=np.uint8), x0, y0, x1, y1, srs_wkt=wkt)
    features = gpd.GeoDataFrame({"j": indexes}, geometry=[regions.geometries[j] for j in indexes], crs=wkt)
    df = exact_extract(source, features, ["cell_id", "coverage"], include_cols=["j"], output="pandas")
    for j, cells, cover in zip(df["j"], df["cell_id"], df["coverage"]):
        cells = np.asarray(cells, dtype=np.int64)
        if cells.size == 0:
            continue
        r, c = np.divmod(cells, w)
        if window.e > 0:  # exactextract counts rows from the top (ymax); flip south-up grids
            r = h - 1 - r
        if window.a < 0:
            c = w - 1 - c
        yield int(j), r * w + c, np.asarray(cover, dtype=np.float64)


# the block's pixel coordinates as a (planar, unit-square) CRS: exactextract wants one on both sides
PIXEL_CRS = 'ENGCRS["block pixels",EDATUM[""],CS[Cartesian,2],AXIS["(E)",east,LENGTHUNIT["metre",1]],AXIS["(N)",north,LENGTHUNIT["metre",1]]]'


def _pixel_space_coverage(regions: Regions, indexes: list[int], window: Affine, shape: tuple[int, int]) -> Iterator[Coverage]:
    """Coverage fractions on a rotated or sheared grid: each region is mapped by the inverse of the
    block's transform to pixel coordinates ``(col, h - row)`` (a north-up unit grid whose row 0 is
    at the top, as exactextract counts), where exactextract measures it. Fractions are ratios of
    areas, which an affine map keeps, so they equal the covered share of each (parallelogram) pixel
    in the raster CRS."""
    import geopandas as gpd
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    h, w = shape
    to_pixels = Affine(1, 0, 0, 0, -1, h) @ ~window
    matrix = [to_pixels.a, to_pixels.b, to_pixels.d, to_pixels.e, to_pixels.xoff, to_pixels.yoff]
    shapes = [shapely.affinity.affine_transform(regions.geometries[j], matrix) for j in indexes]
    source = NumPyRasterSource(np.zeros(shape, dtype=np.uint8), 0.0, 0.0, float(w), float(h), srs_wkt=PIXEL_CRS)
    features = gpd.GeoDataFrame({"j": indexes}, geometry=shapes, crs=PIXEL_CRS)
    df = exact_extract(source, features, ["cell_id", "coverage"], include_cols=["j"], output="pandas")
    for j, cells, cover in zip(df["j"], df["cell_id"], df["coverage"]):
        cells = np.asarray(cells, dtype=np.int64)
        if cells.size:
            yield int(j), cells, np.asarray(cover, dtype=np.float64)


def _dataset(regions: Regions, classes: Sequence[ClassInfo], area: np.ndarray, pixels: np.ndarray, total: np.ndarray) -> xr.Dataset:
    k = len(classes)
    class_area = area[:, :k]
    valid = class_area.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(valid[:, None] > 0, class_area / valid[:, None], np.nan)
    coords = {
        "region": np.array(regions.names, dtype=object),
        "class": np.array([c.name for c in classes], dtype=object),
        "class_id": ("class", np.array([c.id for c in classes], dtype=np.int64)),
        "class_color": ("class", np.array([c.color for c in classes], dtype=object)),
    }
    rc = ("region", "class")
    ds = xr.Dataset(
        {
            "area_m2": (rc, class_area, {"units": "m2", "long_name": "ellipsoidal area per class"}),
            "area_ha": (rc, class_area / 1e4, {"units": "ha"}),
            "pixel_count": (rc, pixels[:, :k], {"units": "pixels", "long_name": "pixels weighted by region coverage fraction"}),
            "share": (rc, share, {"units": "1", "long_name": "fraction of the region's valid (classified) area"}),
            "nodata_area_m2": ("region", area[:, k], {"units": "m2"}),
            "nodata_pixel_count": ("region", pixels[:, k], {"units": "pixels"}),
            "region_area_m2": ("region", area[:, : k + 1].sum(axis=1), {"units": "m2", "long_name": "region area inside the scene, nodata included"}),
            "region_total_area_m2": ("region", total, {"units": "m2", "long_name": "whole region area, inside and outside the scene"}),
        },
        coords=coords,
    )
    ds.attrs["coverage"] = "exact fractional coverage of pixels by regions (exactextract)"
    return ds


# --- the stats.zarr store ---


TIME_ATTRS = {"long_name": "run time", "timezone": "UTC"}


def whole_seconds_utc(when: datetime) -> datetime:
    """``when`` in UTC, naive, truncated to whole seconds (a naive ``when`` is taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when.replace(microsecond=0)


def utc_now() -> datetime:
    """Now in UTC, naive, in whole seconds: the default run time of ``segpipe raster`` and of the
    ``landcover`` flow (microseconds would only make runs look distinct, and netCDF's scipy writer refuses them)."""
    return whole_seconds_utc(datetime.now(timezone.utc))


def to_datetime64(time: Any) -> np.datetime64:
    """A run time as ``datetime64[ns]`` in UTC (naive); aware datetimes are converted to UTC; None is :func:`utc_now`."""
    if time is None:
        time = utc_now()
    if isinstance(time, str):
        try:  # ISO 8601 with an offset or Z (numpy parses those too, but warns it drops time zones)
            time = datetime.fromisoformat(time.strip())
        except ValueError:
            pass  # e.g. nanoseconds: numpy's parser below
    if isinstance(time, datetime) and time.tzinfo is not None:
        time = time.astimezone(timezone.utc).replace(tzinfo=None)
    try:
        return np.datetime64(time, "ns")
    except (ValueError, TypeError) as exc:
        raise InputError(str(time), "not a date/time", "give an ISO time like 2024-06-01T02:00") from exc


def append_stats(
    ds: xr.Dataset, store_path: str | Path, *, time: Any, scene: str, provenance: Provenance | None = None, force: bool = False
) -> Path:
    """Add one run's statistics to ``store_path`` (a zarr store), replacing an entry with the same time and scene.

    Args:
        ds: the output of :func:`compute_stats` (dims ``region``, ``class``).
        store_path: e.g. ``DIR/stats.zarr``; created when missing.
        time: the run time (datetime, numpy datetime64 or ISO string); stored as UTC.
        scene: the scene name (e.g. the file stem).
        provenance: what made ``ds``, stored per ``(time, scene)`` (:mod:`pipeline.raster.provenance`);
            None records nothing (``""``) and replaces any entry.
        force: replace an entry made from another source (:func:`pipeline.raster.entries.check_replacement`).

    Returns:
        ``store_path``. Result dims: ``(time, scene, region, class)``; absent combinations are NaN
        (``""`` for the provenance strings). Classes keep the store's order, new ones after.

    Raises:
        InputError: the entry was made from another source (without ``force``), or ``ds``'s classes
            contradict the store's table (:mod:`pipeline.raster.entries`); the store is unchanged.
    """
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    t = to_datetime64(time)
    if provenance is not None:
        ds = ds.assign({name: ((), value) for name, value in provenance.as_dict().items()})
    entry = ds.expand_dims(time=[t], scene=np.array([scene], dtype=object))
    with lock(store_path, "exclusive"):
        recover(store_path)
        if FAST_APPEND and (store_path / "zarr.json").is_file():
            source = None if provenance is None else provenance.source
            if _append_fast(entry, ds, store_path, time=t, scene=scene, source=source, force=force):
                return store_path
        if (store_path / "zarr.json").is_file():
            # the whole rewrite, streamed: the old store's arrays as dask arrays read chunk by chunk while the new
            # store is written (replace_store); coordinates and the provenance strings (a few KB) in memory
            old = _fill_strings(open_stats_lazy(store_path))
            check_class_table(class_table(old), class_table(ds), store_path)
            check_replacement(old, store_path, time=t, scene=scene, source=None if provenance is None else provenance.source, force=force)
            # the old chunk files the rewrite would write unchanged are linked (a new scene: all but its own)
            unchanged = Unchanged(store_path, {d: old[d].values for d in old.dims}, ((t, scene),)) if check_chunk_sizes(store_path) is not None else None
            if t in old.time.values and scene in old.scene.values:
                old = old.where(~((old.time == t) & (old.scene == scene)))
            merged = _merge(_lazy_entry(entry, old), old, classes=entry)  # dask too: joined onto the store's coordinates lazily
        else:
            merged, unchanged = _fill_strings(entry), None
        merged["time"].attrs.update(TIME_ATTRS)
        replace_store(_tidy(merged), store_path, unchanged=unchanged)
    return store_path


CLASS_COORDS = ("class_id", "class_color")

# module switch: False makes every append read and rewrite the whole store (the tests compare both ways)
FAST_APPEND = True

# what os.link raises where the file system has no hard links (or too many on one file)
NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _append_fast(
    entry: xr.Dataset, ds: xr.Dataset, store: Path, *, time: np.datetime64, scene: str, source: str | None, force: bool
) -> bool:
    """Append ``entry`` (dims ``time`` and ``scene`` of length 1) to ``store`` writing one night only; False
    (nothing done) where only a whole rewrite can do it. The caller holds the exclusive lock.

    Taken when the store was written with every chunk, chunked as :func:`~pipeline.stats_store.store_chunks`
    says (chunk sizes recorded); the entry's scene, regions and classes are already in the store (colours
    alike), its variables, their dimensions and attributes are the store's, its values fit the store's
    types (strings no wider); and its ``time`` is in the store or after every stored time (and its
    encoding in the store's units is exact). The new store is then a
    :func:`~pipeline.stats_store.linked_copy` of the old one whose chunks holding the entry are written
    afresh (that chunk's other nights as they were, the entry's scene and night replaced, as the whole
    rewrite merges it), swapped in atomically: per variable, the one chunk of the entry's scene (the
    per-entry strings: of all scenes, a few KB); when the night starts a new chunk along time, that
    chunk of every scene (all fill but the entry's). Reads the coordinates and those chunks, and stats
    every chunk file: the bytes it reads and writes grow neither with the nights nor with the scenes.

    Raises:
        InputError: as :func:`append_stats` (another source, contradicting classes, a damaged store).
    """
    import zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = zarr.open_group(store, mode="r")
            every_chunk = group.attrs.get(EVERY_CHUNK_ATTR, False)
            if not every_chunk:
                return False  # an older store: the whole rewrite converts it
            if isinstance(every_chunk, bool):  # written before it became 1: netCDF refuses a boolean attribute
                log.debug("%s: fast append not possible (boolean %s of an older segpipe; the whole rewrite converts it)", store, EVERY_CHUNK_ATTR)
                return False
            arrays = dict(group.arrays())
            lazy = xr.open_zarr(store, consolidated=None, chunks=None)  # metadata and index coordinates only
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged store: the whole read reports it (open_stats)
        log.debug("%s: fast append not possible (%s: %s)", store, type(exc).__name__, exc)
        return False
    with lazy:
        plan = _fast_plan(entry, lazy, arrays, time=time, scene=scene)
        if plan is None:
            return False
        index, grow, encoded_time, step = plan
        first = index // step * step  # the first time index of the chunk written
        # a missing chunk file would otherwise be linked into a valid-looking store, and a truncated one be
        # added to: every chunk file is there with its size as written (a stat of each, no read)
        counts = check_chunk_sizes(store)
        if counts is None:
            log.debug("fast append not possible: no chunk sizes recorded")
            return False
        for name, array in arrays.items():  # the record against the metadata: as open_stats's nchunks_initialized == nchunks
            if counts.get(name) != array.nchunks:
                raise damaged(store, f"{array.nchunks - counts.get(name, 0)} of the {array.nchunks} chunk(s) of '{name}' are missing")
        check_class_table(class_table(lazy), class_table(ds), store)
        if not grow and source is not None and "source" in lazy.variables:
            check_replacement(lazy[["source"]].isel(time=[index]).load(), store, time=time, scene=scene, source=source, force=force)
        j = [str(v) for v in lazy["scene"].values].index(scene)
        writes, rewrite = {}, {}  # per time variable: (where, values) written; the chunk key left out of the linked copy
        for name in entry.data_vars:
            array = arrays[name]
            split = array.ndim > 2 and array.chunks[1] == 1  # one scene per chunk (store_chunks)
            row = _entry_row(entry, lazy, array, name, scene=scene)
            fill = np.full(array.shape[1:], "" if array.dtype.kind == "U" else np.nan, dtype=array.dtype)
            if grow and first == index and split:  # a chunk along time the store lacks: every scene's chunk of it is written
                block = fill[None].copy()
                block[0, j] = row
                writes[name] = ((slice(first, index + 1),), block)
                continue
            scenes = slice(j, j + 1) if split else slice(None)  # the entry's chunk along scene, or all scenes (one chunk)
            try:  # the chunk that holds the entry, as far as the array reaches: its other nights (and scenes) stay as they are
                block = np.asarray(array[first : index if grow else min(first + step, array.shape[0]), scenes])
            except Exception as exc:  # noqa: BLE001 - a chunk that does not decode: damage, as open_stats says
                raise damaged(store, f"{type(exc).__name__}: {exc}") from exc
            block = np.concatenate([block, fill[None, scenes]]) if grow else block.copy()
            block[index - first, 0 if split else j] = row
            writes[name] = ((slice(first, first + len(block)), scenes), block)
            if first < array.shape[0]:  # a chunk the old store has: left out of the copy, written whole
                rewrite[name] = f"c.{index // step}.{j}" if split else f"c.{index // step}"

    def build(tmp: Path) -> None:
        linked_copy(store, tmp, rewrite=rewrite)
        with zarr.config.set({"array.write_empty_chunks": True}):
            for name, (where, block) in writes.items():
                array = zarr.open_array(tmp, path=name, mode="r+")
                if grow:
                    array.resize((index + 1, *array.shape[1:]))
                array[where] = block  # whole chunks: nothing read from tmp, where they are absent
            if grow:  # the time coordinate is one chunk: written again, whole (tiny)
                old = arrays[TIME_DIM]
                times = np.append(old[:], np.asarray([encoded_time], dtype=old.dtype))
                zarr.create_array(
                    str(tmp), name=TIME_DIM, data=times, chunks=times.shape, fill_value=old.fill_value, attributes=old.attrs.asdict(),
                    dimension_names=(TIME_DIM,), compressors=old.compressors, serializer=old.serializer,
                    chunk_key_encoding=old.metadata.chunk_key_encoding, overwrite=True,
                )  # fmt: skip

    try:
        update_store(store, build)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise  # a full disk, a read-only folder: the caller reports it
        log.debug("%s: no hard links here (%s); the whole store is rewritten", store, exc)
        return False  # a file system without hard links (some network and FUSE mounts): the whole rewrite
    log.debug("%s: fast append of scene '%s' at time index %d (%s)", store, scene, index, "new" if grow else "existing")
    return True


def _fast_plan(entry: xr.Dataset, lazy: xr.Dataset, arrays: dict[str, Any], *, time: np.datetime64, scene: str) -> tuple[int, bool, Any, int] | None:
    """``(time index, whether it is a new one, its encoded value, time steps per chunk)`` when :func:`_append_fast` can append
    ``entry`` to the store opened as ``lazy`` (``arrays``: its zarr arrays), else None (logged)."""

    def no(why: str) -> None:
        log.debug("fast append not possible: %s", why)

    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

    dims = ("time", "scene", "region", "class")
    if set(lazy.dims) != set(dims) or set(lazy.coords) != {*dims, *CLASS_COORDS} or set(entry.coords) != set(lazy.coords):
        return no("other coordinates")
    if set(entry.data_vars) != set(lazy.data_vars) or set(arrays) != set(lazy.variables):
        return no("other variables")
    for name, array in arrays.items():
        array_dims = tuple(array.metadata.dimension_names or ())
        if array.shards is not None or array.metadata.zarr_format != 3:
            return no(f"'{name}' is sharded")
        if name in lazy.data_vars and array_dims[:2] != (TIME_DIM, "scene"):
            return no(f"'{name}' has other dimensions")
        if TIME_DIM in array_dims and name != TIME_DIM:
            encoding = array.metadata.chunk_key_encoding
            if not isinstance(encoding, DefaultChunkKeyEncoding) or encoding.separator != ".":  # CHUNK_KEY_ENCODING
                return no(f"'{name}' has other chunk keys")
            if array.chunks[1:] != store_chunks(array_dims, array.shape)[1:] or array.chunks[0] != arrays[next(iter(lazy.data_vars))].chunks[0]:
                return no(f"'{name}' is not chunked as this segpipe writes it (along time, and scene where an entry is an array)")
    for name in entry.variables:
        if name != TIME_DIM and entry[name].attrs != lazy[name].attrs:
            return no(f"'{name}' has other attributes")
        if name in entry.data_vars and set(entry[name].dims) != set(lazy[name].dims):
            return no(f"'{name}' has other dimensions")
    if entry.attrs != {k: v for k, v in lazy.attrs.items() if k != EVERY_CHUNK_ATTR}:
        return no("other attributes")
    for dim in ("scene", "region"):  # the whole rewrite's outer join must give the store's own order
        stored = pd.Index(lazy[dim].values.astype(str).tolist())
        if stored.has_duplicates or not stored.equals(stored.union(pd.Index([str(v) for v in entry[dim].values]))):
            return no(f"a new {dim}")
    names = [str(v) for v in lazy["class"].values]
    colors = dict(zip(names, (str(c) for c in lazy["class_color"].values)))
    for name, color in zip(entry["class"].values, entry["class_color"].values):
        if str(name) not in colors or colors[str(name)] != str(color):
            return no("a new class or colour")
    for name in entry.data_vars:
        kind, values = lazy[name].dtype, entry[name].values
        if kind.kind == "U":
            if not all(isinstance(v, str) and len(v) <= kind.itemsize // 4 for v in values.ravel().tolist()):
                return no(f"'{name}' holds longer strings")
        elif kind.kind != "f" or not np.can_cast(values.dtype, kind):
            return no(f"'{name}' has another type")
    times = lazy[TIME_DIM].values
    step = int(arrays[next(iter(lazy.data_vars))].chunks[0])
    if time in times:
        return int(np.flatnonzero(times == time)[0]), False, None, step
    if times.size and not time > times.max():
        return no("an earlier time")
    encoded = _encode_time(time, arrays[TIME_DIM])
    if encoded is None:
        return no("a time the store's units cannot hold")
    return int(times.size), True, encoded, step


def _encode_time(time: np.datetime64, array: Any) -> Any:
    """``time`` encoded as the store's time coordinate ``array`` holds times (its units, calendar and
    type), or None where that encoding would not give ``time`` back exactly."""
    from xarray.coding.times import decode_cf_datetime, encode_cf_datetime

    attrs = array.attrs
    units, calendar = attrs.get("units"), attrs.get("calendar")
    if not units:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            number, _, _ = encode_cf_datetime(np.array([time], dtype="datetime64[ns]"), units, calendar, dtype=array.dtype)
            back = decode_cf_datetime(number, units, calendar)
    except Exception:  # noqa: BLE001 - xarray raises (warnings as errors here) where its units cannot hold the time
        return None
    if np.asarray(number).dtype != array.dtype or np.datetime64(back[0], "ns") != time:
        return None
    return np.asarray(number)[0]


def _entry_row(entry: xr.Dataset, lazy: xr.Dataset, array: Any, name: str, *, scene: str) -> np.ndarray:
    """The entry's values of variable ``name`` for its scene and night, as the zarr ``array`` stores them
    (its dims without ``time`` and ``scene``, the store's regions and classes): NaN or ``""`` where the
    entry has no region or class (as :func:`append_stats`'s whole rewrite merges it)."""
    stored_dims = tuple(array.metadata.dimension_names)
    row = entry[name].isel(time=0).sel(scene=scene, drop=True)
    row = row.drop_vars([c for c in row.coords if c not in row.dims]).transpose(*stored_dims[2:])
    row = row.reindex({dim: lazy[dim].values.astype(object) for dim in row.dims})
    values = np.asarray(row.values)
    if array.dtype.kind == "U":
        values = np.where(pd.isnull(values.astype(object)), "", values.astype(object)).astype(array.dtype)
    return values


def _lazy_entry(entry: xr.Dataset, old: xr.Dataset) -> xr.Dataset:
    """``entry`` on the outer join of its and ``old``'s coordinates (what :func:`_merge`'s join gives): its
    variables with further dimensions than ``time`` and ``scene`` as dask arrays chunked as the store is
    (:func:`~pipeline.stats_store.store_chunks`; fill but the entry's chunk, never made dense), the others
    (the provenance strings, a few KB) in memory. The join then leaves it as it is, and reindexes ``old``
    (dask) without splitting its chunks."""
    import dask.array as da

    dims = [d for d in entry.dims if d in entry.indexes and d in old.indexes]
    union = xr.align(*(xr.Dataset(coords={d: ds[d].variable for d in dims}) for ds in (entry, old)), join="outer")[0]
    full = entry.drop_vars(CLASS_COORDS, errors="ignore")  # _merge takes the class table from the entry itself
    full = full.reindex({d: union[d].values for d in dims if d not in (TIME_DIM, "scene")})  # its regions and classes: small
    at = {d: union.indexes[d].get_loc(full.indexes[d][0]) for d in (TIME_DIM, "scene")}
    big = [name for name, v in full.data_vars.items() if set(v.dims) - {TIME_DIM, "scene"} and v.dims[:2] == (TIME_DIM, "scene") and v.dtype.kind == "f"]
    out = full.drop_vars(big).reindex({d: union[d].values for d in (TIME_DIM, "scene")})  # the provenance strings
    for name in big:
        v = full[name].variable
        shape = tuple(union.sizes.get(d, n) for d, n in zip(v.dims, v.shape))
        chunks = store_chunks(tuple(v.dims), shape, str(name)) or shape
        data = da.full(shape, np.nan, dtype=v.dtype, chunks=chunks)
        data[at[TIME_DIM], at["scene"]] = v.values[0, 0]
        out[name] = xr.Variable(v.dims, data, v.attrs)
    return out


def _merge(new: xr.Dataset, old: xr.Dataset, *, classes: xr.Dataset | None = None) -> xr.Dataset:
    """Outer-join ``new`` over ``old`` (``new`` wins). Classes in store order (``old``'s, then
    ``new``'s others; the tables agree, see :func:`check_class_table`); colours from ``new`` first.
    ``classes``: the Dataset whose class coordinates are ``new``'s (default ``new``: see :func:`_lazy_entry`)."""
    classes = new if classes is None else classes
    table: dict[str, tuple[Any, ...]] = {}
    for ds in (old, classes):
        for i, name in enumerate(ds["class"].values):
            table[str(name)] = tuple(ds[c].values[i] for c in CLASS_COORDS if c in ds.coords)
    order = class_order(class_table(old), class_table(classes))
    merged = new.drop_vars(CLASS_COORDS, errors="ignore").combine_first(old.drop_vars(CLASS_COORDS, errors="ignore"))
    merged = merged.sel({"class": np.array(order, dtype=object)})
    return _fill_strings(merged).assign_coords(
        class_id=("class", np.array([table[n][0] for n in order], dtype=np.int64)),
        class_color=("class", np.array([table[n][1] for n in order], dtype=object)),
    )


def _fill_strings(ds: xr.Dataset) -> xr.Dataset:
    """The provenance strings as object arrays with ``""`` where no entry recorded them (NaN after a join)."""
    for name in PROVENANCE_VARS:
        if name in ds.data_vars:
            values = np.asarray(ds[name].values, dtype=object)
            ds[name] = ds[name].copy(data=np.where(pd.isnull(values), "", values).astype(object))
    return ds


def _tidy(ds: xr.Dataset) -> xr.Dataset:
    """Times in order, dims ``(time, scene, region, class)``; :func:`replace_store` writes the strings fixed-width."""
    ds = ds.sortby("time")
    order = ["time", "scene", "region", "class"]
    return ds.transpose(*order, missing_dims="ignore")


def _open(store: str | Path, part: Callable[[xr.Dataset], xr.Dataset] | None = None) -> xr.Dataset:
    store = Path(store)
    if not (store / "zarr.json").is_file():
        raise InputError(store, "no statistics store here", "run `segpipe raster ... --out DIR` first; stats are in DIR/stats.zarr")
    return open_stats(store, part)  # a snapshot under the shared lock (a lazy open_zarr breaks at the next append)


def area_over_time(store: str | Path, cls: str | int, region: str, *, scene: str | None = None) -> xr.DataArray:
    """Area (m^2) of one class in one region over time.

    Args:
        store: a ``stats.zarr`` written by :func:`append_stats`.
        cls: class name, or class id (int).
        region: region name.
        scene: one scene; None sums the region's area over all scenes (scenes tiling an area,
            without overlap).

    Returns:
        DataArray with dim ``time`` (NaN where the region was not observed).

    Raises:
        InputError: unknown class, region or scene; or ``scene=None`` where scenes overlap in the
            region at some time (their sum would count the overlap twice; see :func:`_check_no_overlap`).
    """
    def part(ds: xr.Dataset) -> xr.Dataset:  # checked against the coordinates; then one class and region read, not the store
        names = [str(v) for v in ds["class"].values]
        name = cls
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            ids = [int(v) for v in ds["class_id"].values]
            if int(cls) not in ids:
                raise InputError(store, f"no class id {cls} (class ids: {ids})", "pick one of the listed ids")
            name = names[ids.index(int(cls))]
        if name not in names:
            raise InputError(store, f"no class '{name}' (classes: {', '.join(names)})", "pick one of the listed classes")
        regions = [str(v) for v in ds["region"].values]
        if region not in regions:
            raise InputError(store, f"no region '{region}' (regions: {', '.join(regions)})", "pick one of the listed regions")
        if scene is not None and scene not in (scenes := [str(v) for v in ds["scene"].values]):
            raise InputError(store, f"no scene '{scene}' (scenes: {', '.join(scenes)})", "pick one of the listed scenes")
        wanted = [v for v in ("area_m2", "region_area_m2", "region_total_area_m2") if v in ds.data_vars]
        return ds[wanted].sel({"class": [name], "region": [region], **({} if scene is None else {"scene": [scene]})})

    ds = _open(store, part)
    cls = str(ds["class"].values[0])
    da = ds["area_m2"].sel({"class": cls, "region": region})
    if scene is not None:
        da = da.sel(scene=scene)
    else:
        _check_no_overlap(ds, store, region)
        da = da.sum("scene", min_count=1)
    return da.drop_vars([c for c in da.coords if c not in ("time",)]).rename(f"area_m2 {cls} in {region}").load()


OVERLAP_RTOL = 1e-6  # pixel areas match pyproj.Geod to ~1e-9; tiles that only share an edge stay far below this


def _check_no_overlap(ds: xr.Dataset, store: str | Path, region: str) -> None:
    """Refuse to sum a region over scenes that overlap: at some time, the scenes' ``region_area_m2``
    add up to more than the region's ``region_total_area_m2`` (stores without it are not checked).

    An overlap that leaves part of the region unobserved can still pass; the sum then is no upper
    bound either, which is why the README queries one scene or a mosaic where scenes overlap."""
    if "region_total_area_m2" not in ds.data_vars:
        return
    inside = ds["region_area_m2"].sel(region=region).sum("scene", min_count=1).load()
    total = ds["region_total_area_m2"].sel(region=region).max("scene").load()
    over = (inside > total * (1 + OVERLAP_RTOL)).values
    if not over.any():
        return
    first = int(np.flatnonzero(over)[0])
    when = np.datetime_as_string(ds["time"].values[first], unit="s")
    raise InputError(
        store,
        f"region '{region}' at {when} (and {int(over.sum()) - 1} other time(s)): its scenes cover {float(inside[first]) / 1e4:.6g} ha of a "
        f"{float(total[first]) / 1e4:.6g} ha region, so they overlap and their sum would count the overlap twice",
        "pass scene=... to take one scene, or segment a mosaic of the overlapping scenes (e.g. one VRT) as one scene",
    )


def plot_area_over_time(store: str | Path, cls: str | int, region: str, out_png: str | Path, *, scene: str | None = None) -> Path:
    """Plot :func:`area_over_time` (hectares) to a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    da = area_over_time(store, cls, region, scene=scene) / 1e4
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    try:
        ax.plot(da["time"].values, da.values, marker="o")
        ax.set_ylabel("area (ha)")
        ax.set_title(f"{cls} in {region}")
        ax.grid(True, alpha=0.3)
        fig.autofmt_xdate()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png)
    finally:
        plt.close(fig)
    return out_png
