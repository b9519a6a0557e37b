"""Write a label raster as a Cloud-Optimized GeoTIFF with a colour table and class names.

Steps (memory bounded by one zarr chunk): stream the labels chunk by chunk into a tiled temporary
GeoTIFF (masked pixels set to nodata), build internal overviews with MODE resampling (the majority
class, never a blend of ids), copy to COG layout with GDAL's COG driver, then rename atomically to
the final name. Class names are written three ways so that every reader finds them: band
metadata ``CLASS_<id>=<name>``, a dataset tag ``SEGPIPE_CLASSES`` (JSON with ids, names, colours;
the model's name is in ``SEGPIPE_MODEL``) and GDAL category names in a ``.aux.xml`` sidecar (QGIS shows the colour table with these names
as its legend).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.errors
from rasterio.enums import Resampling
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from models.spec import ClassInfo
from pipeline.errors import InputError
from pipeline.raster.probe import RasterInfo
from pipeline.stop import check_stop

log = logging.getLogger(__name__)

TILE = 512

# named creation profiles (as rio-cogeo does), not options scattered through the code
TEMP_PROFILE = {
    "driver": "GTiff", "tiled": True, "blockxsize": TILE, "blockysize": TILE, "compress": "deflate", "zlevel": 1, "bigtiff": "if_safer",
    "num_threads": "ALL_CPUS",
}
COG_OPTIONS = {"compress": "DEFLATE", "blocksize": TILE, "overviews": "FORCE_USE_EXISTING", "bigtiff": "IF_SAFER", "num_threads": "ALL_CPUS"}


def refuse_foreign_labels(path: Path) -> None:
    """Refuse to replace a ``<stem>.labels.tif`` that segpipe did not write (it has no
    ``SEGPIPE_CLASSES`` tag): a user's own classification under that name was silently overwritten.

    Raises:
        InputError: naming the file and the fix (move it, another --out, or --force to replace it).
    """
    if not path.is_file():
        return
    try:
        with rasterio.open(path) as src:
            ours = "SEGPIPE_CLASSES" in src.tags()
            what = "it has no SEGPIPE_CLASSES tag"
    except rasterio.errors.RasterioIOError:
        ours, what = False, "not a readable raster"
    if not ours:
        raise InputError(
            path, f"exists and was not written by segpipe ({what}); segmenting would replace it",
            "move it away or give another --out (--force replaces it)",
        )


def overview_factors(width: int, height: int, tile: int = TILE) -> list[int]:
    """Decimation factors 2, 4, 8, ... until the coarsest overview fits in one tile."""
    factors = []
    f = 2
    while max(width, height) / (f // 2) > tile:
        factors.append(f)
        f *= 2
    return factors


def write_label_cog(
    labels_zarr_array: Any,
    mask: Any | None,
    info: RasterInfo,
    classes: Sequence[ClassInfo],
    out_path: str | Path,
    *,
    nodata: int = 255,
    model: str = "",
) -> Path:
    """Write labels ``(Y, X)`` as a COG on exactly the input's grid.

    Args:
        labels_zarr_array: class ids, shape ``(Y, X)`` = ``info.shape``; a zarr array (read chunk
            by chunk) or anything sliceable with numpy slices.
        mask: valid pixels ``(Y, X)`` (True/nonzero = valid) or None; invalid pixels become ``nodata``.
        info: the input raster's description (CRS, transform, size).
        classes: the model's classes (ids, names, colours) for the colour table and names.
        out_path: the final ``.tif`` path; it appears only when complete.
        nodata: output nodata value (must not be a class id).
        model: the model's name, written as the dataset tag ``SEGPIPE_MODEL`` (omitted when empty).

    Returns:
        ``out_path``.
    """
    out_path = Path(out_path)
    if tuple(labels_zarr_array.shape) != info.shape:
        raise InputError(out_path, f"labels shape {tuple(labels_zarr_array.shape)} differs from the raster's {info.shape}", "write labels on the input grid")
    if nodata in {c.id for c in classes}:
        raise InputError(out_path, f"nodata {nodata} is also a class id", "choose a nodata value outside the class ids")
    dtype = np.dtype(labels_zarr_array.dtype)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_path)
    token = uuid.uuid4().hex[:8]
    tmp = out_path.with_name(f".{out_path.name}.{token}.tmp.tif")
    cog = out_path.with_name(f".{out_path.name}.{token}.cog.tif")
    aux_tmp = out_path.with_name(f".{out_path.name}.{token}.aux.xml")
    aux = out_path.with_name(out_path.name + ".aux.xml")
    try:
        _write_tiled(labels_zarr_array, mask, info, classes, tmp, dtype=dtype, nodata=nodata, model=model)
        rio_copy(str(tmp), str(cog), driver="COG", **COG_OPTIONS)
        aux_tmp.write_text(_pam_xml(classes, nodata), encoding="utf-8")
        os.replace(aux_tmp, aux)
        os.replace(cog, out_path)
    except BaseException:
        for p in (cog, aux_tmp):
            p.unlink(missing_ok=True)
        if not out_path.exists():
            aux.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s", out_path)
    return out_path


def _remove_stale_temporaries(out_path: Path) -> None:
    """Remove the hidden temporaries (``.<name>.<token>.tmp.tif``, ``.cog.tif``, ``.aux.xml``) a
    killed run left next to ``out_path``; one scene's outputs are written by one run at a time."""
    for suffix in ("tmp.tif", "cog.tif", "aux.xml"):
        for stale in out_path.parent.glob(f".{glob_escape(out_path.name)}.{'[0-9a-f]' * 8}.{suffix}"):
            log.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)


def _write_tiled(labels, mask, info: RasterInfo, classes, path: Path, *, dtype, nodata: int, model: str = "") -> None:
    profile = dict(TEMP_PROFILE, width=info.width, height=info.height, count=1, dtype=dtype.name, crs=info.crs, transform=info.transform, nodata=nodata)
    step = _chunk_step(labels)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write_colormap(1, _colormap(classes, nodata))  # before any pixel: it sets the photometric tag
        for r0 in range(0, info.height, step[0]):
            for c0 in range(0, info.width, step[1]):
                check_stop()  # a stop request ends the COG between tiles (pipeline/stop.py)
                rows = slice(r0, min(r0 + step[0], info.height))
                cols = slice(c0, min(c0 + step[1], info.width))
                tile = np.asarray(labels[rows, cols]).astype(dtype, copy=True)
                if mask is not None:
                    tile[~np.asarray(mask[rows, cols]).astype(bool)] = nodata
                window = Window(cols.start, rows.start, tile.shape[1], tile.shape[0])
                dst.write(tile, 1, window=window)
        dst.set_band_description(1, "class")
        dst.update_tags(1, **{f"CLASS_{c.id}": c.name for c in classes})
        dst.update_tags(SEGPIPE_CLASSES=json.dumps([{"id": c.id, "name": c.name, "color": c.color} for c in classes]), SEGPIPE_NODATA=str(nodata))
        if model:
            dst.update_tags(SEGPIPE_MODEL=model)
    _build_overviews(path, overview_factors(info.width, info.height))


def _build_overviews(path: Path, factors: list[int]) -> None:
    """MODE overviews, built on the closed file reopened: GDAL computes each level from the one
    before, and only overview bands read from the file carry the colour table (built in the
    writing dataset, levels 2+ warn "palette index raster bands without a palette")."""
    if not factors:
        return
    # GDAL computes overviews on one thread unless told (MODE at 16k^2: 2.3 s -> 1.4 s on 2 cores)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "r+") as dst:
        dst.build_overviews(factors, Resampling.mode)
        dst.update_tags(ns="rio_overview", resampling="mode")


def _chunk_step(labels) -> tuple[int, int]:
    chunks = getattr(labels, "chunks", None)
    if chunks and isinstance(chunks[0], int):
        # whole zarr chunks, rounded up to whole output tiles
        return tuple(max(TILE, -(-c // TILE) * TILE) for c in chunks[:2])
    return (2 * TILE, 2 * TILE)


def _colormap(classes: Sequence[ClassInfo], nodata: int) -> dict[int, tuple[int, int, int, int]]:
    cmap = {c.id: (*c.rgb, 255) for c in classes}
    cmap[nodata] = (0, 0, 0, 0)
    return cmap


def _pam_xml(classes: Sequence[ClassInfo], nodata: int) -> str:
    """GDAL PAM sidecar with category names indexed by pixel value (gaps left empty)."""
    names = {c.id: c.name for c in classes}
    top = max(max(names), nodata if nodata < 1024 else 0)
    cats = "".join(f"      <Category>{escape(names.get(i, 'nodata' if i == nodata else ''))}</Category>\n" for i in range(top + 1))
    return f'<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n{cats}    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n'
