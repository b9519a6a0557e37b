"""Ingest any GDAL raster into a zarr v3 store, tile by tile, with its georeferencing.

The store is an xarray/rioxarray-compatible group::

    image        (band, y, x)  source dtype (raw values, nodata included), chunks (C, block, block), _FillValue = nodata
    band_mask    (band, y, x)  bool, True where that band's value is valid, chunks (C, block, block)
    mask         (y, x)        bool, True where the pixel is valid (any band valid), chunks (block, block)
    band         (band)        band names (descriptions, or "band_<i>")
    y, x         pixel-centre coordinates in CRS units (axis-aligned transforms only)
    spatial_ref  scalar with ``crs_wkt`` and ``GeoTransform`` (CF / GDAL conventions)

so ``xr.open_zarr(store, decode_coords="all").rio.crs`` and ``.rio.transform()`` give the input's
CRS and transform back.

What is invalid (:func:`_read_tile`): a band's value is invalid where GDAL's mask for that band says
so (its nodata value, an internal mask band), where it is NaN or +/-inf (float data, whatever the
declared nodata), and, in every band, where an alpha band that is not fed to the model is 0
(transparent). Bands whose colour interpretation is alpha are not data bands unless ``bands`` names
them. A pixel is nodata only when all its bands are invalid (GDAL's convention: a dark RGB pixel with
one zero band keeps its label); the model never sees an invalid band value (see
:mod:`pipeline.raster.fill`). Memory is bounded by one ``(C, block, block)`` tile: the raster is never
read whole. The store is written under a temporary name and renamed when complete, so an existing
store at ``store_path`` is always complete; it is reused when its source signature matches: the path, bands, block and layout, and
the input's version (a local file's size and modification time, a VRT mosaic's tiles', a URL's
ETag or Last-Modified and size: :mod:`pipeline.raster.object_version`). A URL whose server gives no
version is never reused.

What the raster is and whether it can be segmented (:class:`RasterInfo`, :func:`probe_raster`, band
selection and the refusals) is :mod:`pipeline.raster.probe`; the names of it that callers import from
here are re-exported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pipeline.errors import InputError
from pipeline.known_warnings import known_warnings_ignored
from pipeline.outputs import remove_stale_temporaries
from pipeline.raster.object_version import ObjectVersion, object_version
from pipeline.raster.probe import (
    RasterInfo,
    alpha_bands,
    check_exists,
    gdal_reason,
    info_from_dataset,
    is_local_path,
    mosaic_sources,
    open_raster,
    probe_raster,
    remote_fix,
    scene_stem,
)
from pipeline.stop import check_stop
from pipeline.zarr_write import fast_writes

__all__ = [
    "STORE_ATTR",
    "STORE_LAYOUT",
    "band_stats",
    "every_pixel_valid",
    "ingest_raster",
    "read_info",
    "read_preview",
    "tiles",
    # re-exported from pipeline.raster.probe
    "RasterInfo",
    "check_exists",
    "probe_raster",
    "scene_stem",
]

log = logging.getLogger(__name__)

STORE_ATTR = "segpipe_ingest"
# what the store holds, in its signature: a store of another layout is ingested again, never reused
# (2: band_mask, NaN/inf invalid, alpha bands not data bands by default and their transparency nodata)
STORE_LAYOUT = 2
# GDAL drivers whose reads with GDAL_NUM_THREADS raise when a worker thread fails (see read_settings)
THREADED_READ_DRIVERS = frozenset({"GTiff", "JP2OpenJPEG"})
# GDAL keeps a URL's size and the byte ranges it read after the file is closed, for the whole process,
# and a later open of the same URL read them back: an object replaced on the server (a Prefect retry
# runs in the same process) came back as the old one. Not cached, a file's ranges are dropped when it
# is closed; reads while it is open are cached as before. (A colon-separated list of prefixes: "/vsicurl/" has none.)
REMOTE_NOT_CACHED = {"CPL_VSIL_CURL_NON_CACHED": "/vsicurl/"}


def tiles(height: int, width: int, block: int) -> Iterator[tuple[slice, slice]]:
    """Row-major ``(rows, cols)`` slices of the ``block x block`` tiling of a ``(height, width)`` grid."""
    for r0 in range(0, height, block):
        for c0 in range(0, width, block):
            yield slice(r0, min(r0 + block, height)), slice(c0, min(c0 + block, width))


def ingest_raster(
    path_or_url: str | Path,
    store_path: str | Path,
    *,
    block: int,
    bands: Sequence[int] | None = None,
    in_channels: int | None = None,
    model_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    preview_size: int = 1024,
    version: ObjectVersion | None = None,
) -> RasterInfo:
    """Copy a raster into a zarr v3 store tile by tile (see the module docstring for the layout).

    Args:
        path_or_url: the raster (local path or GDAL-readable URL).
        store_path: the zarr store to create (a directory). Reused as is when it holds a
            complete ingest of the same source, bands and block size.
        block: tile and chunk size in pixels; memory use is about ``C * block * block`` values.
        bands: 1-based band indexes to keep (None: all but alpha bands).
        in_channels: expected number of bands (the model's), checked before any pixel is read.
        model_name: named in the band-count error.
        progress: optional ``callable(tiles_done, tiles_total)``.
        preview_size: long side of the decimated preview kept for the quicklook (memory:
            ``bands x preview_size^2`` values at most).
        version: the server's version of a URL (:func:`~pipeline.raster.object_version.object_version`),
            asked before the first pixel is read; None: asked here.

    Returns:
        The :class:`RasterInfo` of the ingested image.

    Raises:
        InputError: the file is not a readable raster, is truncated, has no CRS, or has the wrong bands.
        InputError: (transient) a URL's object was replaced on the server while it was read.
    """
    if block < 1:
        raise InputError(str(block), "block size must be a positive number of pixels", "use e.g. --block 1024")
    store_path = Path(store_path)
    version = object_version(path_or_url) if version is None else version  # before GDAL reads a byte of it
    # the reads run under the settings for the driver that opened it (a VRT's sources on one thread)
    with rasterio.Env(**read_settings(path_or_url)), open_raster(path_or_url) as src, rasterio.Env(**read_settings(path_or_url, src.driver)):
        info = info_from_dataset(src, str(path_or_url), bands, in_channels, model_name)
        fed_alpha = [b for b in alpha_bands(src) if b in info.bands]
        if fed_alpha:
            log.info("%s: band(s) %s tagged alpha are fed to the model as data (--bands): they mark no pixel transparent", info.path, fed_alpha)
        signature = _signature(path_or_url, info, block, version)
        if version.reusable and _existing_signature(store_path) == signature:
            damage = _damage(store_path)
            if damage is None:
                log.info("%s: reusing complete ingest %s", info.path, store_path)
                return info
            log.warning("%s: %s; ingesting %s again", store_path, damage, info.path)
        remove_stale_temporaries(store_path)
        tmp = store_path.with_name(f"{store_path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            arrays = _create_store(tmp, info, block)
            stats = _copy_tiles(src, info, arrays, block, progress, preview_size)
            _check_unchanged(path_or_url, info, version)
            _finish_store(tmp, {"signature": signature, "info": info.to_json(), "block": block, "band_stats": stats})
            if store_path.exists():
                _remove_store(store_path)
            tmp.rename(store_path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return info


def read_info(store_path: str | Path) -> RasterInfo:
    """The :class:`RasterInfo` recorded in a complete ingest store."""
    return RasterInfo.from_json(_store_attrs(Path(store_path))["info"])


def band_stats(store_path: str | Path) -> dict[str, list[float]]:
    """Per-band ``count``, ``mean`` and ``std`` over valid pixels, computed during ingest."""
    return _store_attrs(Path(store_path))["band_stats"]


def every_pixel_valid(store_path: str | Path) -> bool:
    """True when the ingest found no invalid value in any band (no nodata, mask, transparency, NaN):
    ``band_mask`` and ``mask`` are all True."""
    attrs = _store_attrs(Path(store_path))
    counts, info = attrs["band_stats"]["count"], RasterInfo.from_json(attrs["info"])
    return bool(counts) and all(int(c) == info.height * info.width for c in counts)


def _store_attrs(store_path: Path) -> dict[str, Any]:
    import zarr

    try:
        attrs = zarr.open_group(store_path, mode="r").attrs.asdict()
    except Exception as exc:  # zarr raises several types for a missing/foreign store
        raise InputError(store_path, f"not a segpipe ingest store ({exc})", "re-run the ingest") from exc
    if STORE_ATTR not in attrs:
        raise InputError(store_path, "not a segpipe ingest store", "re-run the ingest")
    return attrs[STORE_ATTR]


def _signature(path_or_url, info: RasterInfo, block: int, version: ObjectVersion) -> dict[str, Any]:
    sig: dict[str, Any] = {"path": info.path, "bands": list(info.bands), "block": block, "layout": STORE_LAYOUT}  # a URL without credentials
    path = Path(str(path_or_url))
    if path.exists():
        stat = path.stat()
        sig.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    if version.validator != "not asked":  # a URL's version on the server (its ETag or Last-Modified, its size)
        sig["version"] = version.stamp()
    sources = mosaic_sources(path_or_url)
    if sources:  # a VRT mosaic: a tile rewritten in place leaves the .vrt as it was
        sig["sources"] = [_file_stamp(f) for f in sources]
    return sig


def _check_unchanged(path_or_url, info: RasterInfo, version: ObjectVersion) -> None:
    """Raise when a URL's object was replaced on the server while its tiles were read (the store
    would hold pixels of both objects); one more small request, after the copy."""
    if not version.known:
        return
    now = object_version(path_or_url)
    if now.known and now != version:
        raise InputError(
            info.path, f"the object was replaced on the server while it was read ({version.text()}, now {now.text()})",
            "run again: the retry reads the new object whole", transient=True,
        )


def _file_stamp(path: str) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file, ``[path]`` when it is missing (one ``stat``)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return [path]
    return [path, stat.st_size, stat.st_mtime_ns]


def _existing_signature(store_path: Path) -> dict[str, Any] | None:
    if not (store_path / "zarr.json").is_file():
        return None
    try:
        raw = json.loads((store_path / "zarr.json").read_text(encoding="utf-8"))
        return raw["attributes"][STORE_ATTR]["signature"]
    except (ValueError, KeyError, TypeError):
        return None


def _damage(store_path: Path) -> str | None:
    """What is wrong with a complete ingest store (a chunk lost or an array's metadata damaged since), or None.

    Every tile writes every chunk of ``image``, ``band_mask`` and ``mask``: a missing one would read
    back as the fill value (nodata, "invalid"), silently changing labels and statistics.
    """
    import zarr

    try:
        group = zarr.open_group(store_path, mode="r", use_consolidated=False)
        for name in ("image", "band_mask", "mask", "preview", "preview_mask"):
            array = group[name]
            if name in ("image", "band_mask", "mask") and array.nchunks_initialized != array.nchunks:
                return f"{array.nchunks - array.nchunks_initialized} of the {array.nchunks} chunks of '{name}' are missing"
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for damaged metadata
        return f"not a readable ingest ({type(exc).__name__}: {exc})"
    return None


def _remove_store(store_path: Path) -> None:
    if not (store_path / "zarr.json").is_file():
        raise InputError(store_path, "exists and is not a zarr store", "remove it or choose another output folder")
    shutil.rmtree(store_path)


def _create_store(path: Path, info: RasterInfo, block: int) -> dict[str, Any]:
    """Write the dataset's metadata and coordinates (no pixel chunks); return the zarr arrays."""
    import dask.array as da
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr
    import zarr
    from zarr.codecs import BloscCodec

    # the work store's pixels, written once here and read ~1.7 times by the engine: blosc lz4 with
    # bit shuffling encodes a 4 x 1024^2 uint8 chunk in 4.2 ms against zarr's default zstd's 10.4
    # and decodes it in 2.6 against 3.9 ms, at about the same size (synthetic 16k^2 scene, 2 cores)
    codec = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    c, (h, w) = info.count, info.shape
    # one dask chunk per array (never computed: compute=False writes metadata only), the zarr chunks set
    # by encoding: dask chunks of block x block built a graph of 3 tasks per block (a 400k^2 scene at
    # --block 1024: 1.2 GB and 40 s before the first tile)
    image = da.zeros((c, h, w), dtype=info.dtype, chunks=-1)
    band_mask = da.zeros((c, h, w), dtype=bool, chunks=-1)
    mask = da.zeros((h, w), dtype=bool, chunks=-1)
    coords: dict[str, Any] = {"band": np.array(info.band_names, dtype=object)}
    t = info.transform
    if t.b == 0 and t.d == 0:
        coords["x"] = t.c + t.a * (np.arange(w) + 0.5)
        coords["y"] = t.f + t.e * (np.arange(h) + 0.5)
    variables = {"image": (("band", "y", "x"), image), "band_mask": (("band", "y", "x"), band_mask), "mask": (("y", "x"), mask)}
    ds = xr.Dataset(variables, coords=coords)
    ds = ds.rio.write_crs(info.crs.to_wkt()).rio.write_transform(info.transform)
    ds["band_mask"].attrs.update(description="True where the band's value is valid (not nodata, masked, transparent, NaN or inf)")
    ds["mask"].attrs.update(description="True where the pixel is valid: any band valid (from the raster's nodata, masks, alpha, NaN)")
    if info.nodata is not None:
        ds["image"] = ds["image"].rio.write_nodata(_typed_nodata(info.nodata, info.dtype), encoded=True)
    else:
        ds["image"].encoding["_FillValue"] = None
    ds["image"].attrs["source_bands"] = list(info.bands)
    ds["image"].encoding["compressors"] = [codec]  # added to the nodata encoding above, not replacing it
    ds["band_mask"].encoding["compressors"] = [codec]
    for name, chunks in (("image", (c, block, block)), ("band_mask", (c, block, block)), ("mask", (block, block))):
        ds[name].encoding["chunks"] = chunks
    with known_warnings_ignored():
        ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=True)
    group = zarr.open_group(path, mode="r+")
    return {"image": fast_writes(group["image"]), "band_mask": fast_writes(group["band_mask"]), "mask": fast_writes(group["mask"]), "group": group}


def _typed_nodata(nodata: float, dtype: str):
    if np.issubdtype(np.dtype(dtype), np.integer):
        return np.dtype(dtype).type(int(nodata))
    return np.dtype(dtype).type(nodata)


class _BandMoments:
    """Per-band count/mean/std over valid pixels, merged tile by tile.

    8/16-bit integer bands keep exact histograms (``np.bincount``, one pass, no float copies);
    other types merge per-tile moments (Chan's parallel algorithm).
    """

    def __init__(self, count: int, dtype: str) -> None:
        kind = np.dtype(dtype)
        self.hist_size = 2 ** (8 * kind.itemsize) if kind.kind == "u" and kind.itemsize <= 2 else 0
        self.hist = np.zeros((count, self.hist_size), dtype=np.int64) if self.hist_size else None
        self.n = np.zeros(count)
        self.mean = np.zeros(count)
        self.m2 = np.zeros(count)

    def add(self, data: np.ndarray, valid: np.ndarray | None) -> None:
        """``data`` (C, Y, X); ``valid`` (C, Y, X) bool per band, or None when every value is valid."""
        if self.hist is not None:
            for b in range(data.shape[0]):
                values = data[b] if valid is None else data[b][valid[b]]
                self.hist[b] += _histogram(np.ascontiguousarray(values).ravel(), self.hist_size)
            return
        for b in range(data.shape[0]):
            vals = (data[b] if valid is None else data[b][valid[b]]).astype(np.float64).ravel()
            k = vals.size
            if not k:
                continue
            t_mean = vals.mean()
            t_m2 = ((vals - t_mean) ** 2).sum()
            delta = t_mean - self.mean[b]
            total = self.n[b] + k
            self.mean[b] += delta * k / total
            self.m2[b] += t_m2 + delta**2 * self.n[b] * k / total
            self.n[b] = total

    def result(self) -> dict[str, list[float]]:
        if self.hist is not None:
            values = np.arange(self.hist_size, dtype=np.float64)
            self.n = self.hist.sum(axis=1).astype(np.float64)
            safe = np.maximum(self.n, 1)
            self.mean = (self.hist * values).sum(axis=1) / safe
            self.m2 = (self.hist * (values[None, :] - self.mean[:, None]) ** 2).sum(axis=1)
        c = len(self.n)
        std = np.sqrt(np.divide(self.m2, self.n, out=np.zeros(c), where=self.n > 0))
        mean = np.where(self.n > 0, self.mean, 0.0)
        return {"count": self.n.tolist(), "mean": mean.tolist(), "std": std.tolist()}


def _histogram(values: np.ndarray, size: int) -> np.ndarray:
    """Counts of each value of 1-D unsigned ``values`` (``size`` bins); torch's bincount counts
    uint8 without numpy's cast to int64, 4x faster here (ingest spent 2 s of 16k^2 in np.bincount)."""
    if values.dtype == np.uint8:
        import torch

        return torch.bincount(torch.from_numpy(values), minlength=size).numpy()
    return np.bincount(values, minlength=size)


@dataclass(frozen=True)
class _Masking:
    """Where a tile's validity comes from, for the selected bands.

    Attributes:
        gdal: positions (0-based, in image order) of the bands whose GDAL mask is read (their nodata
            value or an internal mask band). Masks GDAL derives from an alpha band are not used:
            transparency comes from ``alpha``, and an alpha band fed as data masks nothing.
        alpha: 1-based alpha bands not fed to the model; where one is 0 the pixel is transparent.
        finite: float data: NaN and +/-inf are invalid, whatever the declared nodata.
    """

    gdal: tuple[int, ...]
    alpha: tuple[int, ...]
    finite: bool

    @classmethod
    def of(cls, src, info: RasterInfo) -> _Masking:
        gdal = tuple(
            i for i, b in enumerate(info.bands) if src.mask_flag_enums[b - 1] != [MaskFlags.all_valid] and MaskFlags.alpha not in src.mask_flag_enums[b - 1]
        )
        alpha = tuple(b for b in alpha_bands(src) if b not in info.bands)
        return cls(gdal, alpha, np.dtype(info.dtype).kind == "f")


def read_settings(path_or_url: str | Path, driver: str | None = None) -> dict[str, str]:
    """GDAL settings for opening ``path_or_url`` (``driver`` None) and for reading its pixels once
    the GDAL ``driver`` that opened it is known.

    Worker threads only where their failures fail the read. GDAL 3.10 logs a failure on one of its
    worker threads ("ERROR 1: ...") and may return the window as zeros without failing: the scene is
    segmented as class 0 there and its statistics recorded as done.

    - A local file of a driver in :data:`THREADED_READ_DRIVERS` (GTiff, JPEG 2000: a truncated or
      garbled tile raises) is decoded on all cores: 16k^2 4-band DEFLATE reads 2.6-3.5 -> 1.5 s on
      2 cores, and the ingest is the largest stage outside the engine. Other drivers read in one
      thread: a VRT mosaic's missing or truncated source was read as zeros
      (``tests/raster/test_silent_vrt_mosaic.py``). GTiff takes its decoding threads at open, a VRT
      its source threads at each read.
    - A remote file reads in one thread: with threads, GDAL fetches a window's tiles in parallel
      range requests, and when those failed (a server answering 503, or one ignoring ranges) the
      window came back as zeros (``tests/raster/test_raster_remote.py``). In one thread GDAL still
      fetches a window's tiles in one merged request, so little is lost (4096^2 4-band DEFLATE from
      a server 30 ms away: 0.86 s in one thread, 0.80 s on all cores). Remote reads also retry
      transient HTTP errors (429, 5xx) 3 times, unless ``GDAL_HTTP_MAX_RETRY`` is set, and keep
      nothing of it in GDAL's ``/vsicurl/`` cache once closed (:data:`REMOTE_NOT_CACHED`).
    """
    if is_local_path(path_or_url):
        return {"GDAL_NUM_THREADS": "ALL_CPUS" if driver is None or driver in THREADED_READ_DRIVERS else "1"}
    settings = {"GDAL_NUM_THREADS": "1", **REMOTE_NOT_CACHED}
    if "GDAL_HTTP_MAX_RETRY" not in os.environ:
        settings.update(GDAL_HTTP_MAX_RETRY="3", GDAL_HTTP_RETRY_DELAY=os.environ.get("GDAL_HTTP_RETRY_DELAY", "1"))
    return settings


def _read_tile(src, info: RasterInfo, rows: slice, cols: slice, masking: _Masking) -> tuple[np.ndarray, np.ndarray | None]:
    """One tile: ``(C, y, x)`` raw values and ``(C, y, x)`` per-band validity, or None when every value is valid."""
    window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    try:
        data = src.read(indexes=list(info.bands), window=window, out_dtype=info.dtype)
        valid = None
        if masking.gdal:
            with known_warnings_ignored():  # alpha flag next to nodata: nodata decides; transparency is read below
                masks = src.read_masks(indexes=[info.bands[i] for i in masking.gdal], window=window)
            valid = np.ones(data.shape, dtype=bool)
            valid[list(masking.gdal)] = masks > 0
        if masking.alpha:
            opaque = (src.read(indexes=list(masking.alpha), window=window) > 0).all(axis=0)
            valid = np.broadcast_to(opaque, data.shape).copy() if valid is None else valid & opaque
    except RasterioError as exc:
        where, reason = f"read failed at rows {rows.start}..{rows.stop}, cols {cols.start}..{cols.stop}", gdal_reason(exc)
        if not is_local_path(info.path):
            raise InputError(info.path, f"{where} ({reason})", remote_fix(reason, reading=True), transient=True) from exc  # it opened a moment ago
        raise InputError(info.path, f"{where}: the file is truncated or corrupt ({reason})", "re-download or re-export the file") from exc
    if masking.finite:
        finite = np.isfinite(data)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    return data, None if valid is None or valid.all() else valid


def _copy_tiles(src, info: RasterInfo, arrays, block: int, progress, preview_size: int) -> dict[str, list[float]]:
    """Copy every tile; return per-band count/mean/std over valid pixels.

    The next tile is read (GDAL, GIL released) on a background thread while this one is compressed
    into zarr, so reading and writing overlap. One reader thread only: a rasterio dataset is not
    safe for concurrent reads.
    """
    grid = list(tiles(info.height, info.width, block))
    masking = _Masking.of(src, info)
    moments = _BandMoments(info.count, info.dtype)
    preview = _Preview(info, preview_size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segpipe-ingest") as reader:
        pending = reader.submit(_read_tile, src, info, *grid[0], masking) if grid else None
        for i, (rows, cols) in enumerate(grid):
            check_stop()  # a stop request ends the ingest between tiles (pipeline/stop.py)
            data, valid = pending.result()
            if i + 1 < len(grid):
                pending = reader.submit(_read_tile, src, info, *grid[i + 1], masking)
            arrays["image"][:, rows, cols] = data
            arrays["band_mask"][:, rows, cols] = np.ones(data.shape, dtype=bool) if valid is None else valid
            # GDAL's convention: a pixel is nodata only when every band is (a dark RGB pixel with one 0 band is not)
            arrays["mask"][rows, cols] = np.ones(data.shape[1:], dtype=bool) if valid is None else valid.any(axis=0)
            moments.add(data, valid)
            preview.add(rows, cols, data, valid)
            if progress is not None:
                progress(i + 1, len(grid))
    preview.save(arrays["group"])
    return moments.result()


class _Preview:
    """Every ``stride``-th pixel of the image and its per-band mask, gathered while tiles stream past.

    The quicklook is drawn from it, so it needs no second pass over a gigapixel input (a decimated
    GDAL read of a file without overviews decodes every block again).
    """

    def __init__(self, info: RasterInfo, size: int) -> None:
        self.stride = max(1, -(-max(info.height, info.width) // size))
        shape = (-(-info.height // self.stride), -(-info.width // self.stride))
        self.image = np.zeros((info.count, *shape), dtype=info.dtype)
        self.mask = np.zeros((info.count, *shape), dtype=bool)

    def add(self, rows: slice, cols: slice, data: np.ndarray, valid: np.ndarray | None) -> None:
        r0, c0 = (-rows.start) % self.stride, (-cols.start) % self.stride
        sub = data[:, r0 :: self.stride, c0 :: self.stride]
        if sub.size == 0:
            return
        pr, pc = (rows.start + r0) // self.stride, (cols.start + c0) // self.stride
        target = (slice(pr, pr + sub.shape[1]), slice(pc, pc + sub.shape[2]))
        self.image[(slice(None), *target)] = sub
        self.mask[(slice(None), *target)] = True if valid is None else valid[:, r0 :: self.stride, c0 :: self.stride]

    def save(self, group) -> None:
        dims = ("preview_y", "preview_x")
        group.create_array("preview", data=self.image, attributes={"stride": self.stride}, dimension_names=("band", *dims), overwrite=True)
        group.create_array("preview_mask", data=self.mask, dimension_names=("band", *dims), overwrite=True)


def read_preview(store_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The ingest preview: ``(C, y, x)`` image and ``(C, y, x)`` per-band valid mask, every ``stride``-th pixel."""
    import zarr

    group = zarr.open_group(store_path, mode="r", use_consolidated=False)
    return group["preview"][...], group["preview_mask"][...]


def _finish_store(path: Path, attrs: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(path, mode="r+")
    group.attrs[STORE_ATTR] = attrs
    with known_warnings_ignored():
        zarr.consolidate_metadata(path)
