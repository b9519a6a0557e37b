"""What an input raster is and whether segpipe can segment it: the header only, no pixels.

:func:`probe_raster` opens a raster (a local path or anything GDAL opens) and returns its
:class:`RasterInfo` after band selection, or refuses it with an :class:`~pipeline.errors.InputError`
naming the file, the problem and the fix:

* not a readable raster (:func:`open_raster`; a missing local file: :func:`check_exists`);
* no regular georeferenced grid: GCP- or RPC-only georeferencing, no CRS, no geotransform, or a
  PNG/JPEG renamed ``.tif`` (a "disguised" file);
* complex (SAR SLC) or other non-numeric bands;
* band indexes out of range, or a band count the model does not take.

Bands whose colour interpretation is alpha (:func:`alpha_bands`) are not data bands unless
``bands`` names them. :func:`scene_stem` and :func:`is_local_path` name and locate inputs. Copying
the pixels into the work store is :mod:`pipeline.raster.ingest`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from pipeline.errors import InputError
from pipeline.known_warnings import known_warnings_ignored
from pipeline.urls import public_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about an input raster (after band selection).

    Attributes:
        path: the file path or URL as given.
        width, height: size in pixels (X, Y).
        count: number of selected bands (C of the ``(C, Y, X)`` image).
        dtype: numpy dtype name of the ingested image.
        crs: the raster's CRS.
        transform: pixel (col, row) -> CRS (x, y) affine transform (pixel corner convention).
        nodata: the nodata value of the first selected band, or None.
        band_names: one name per selected band.
        bands: 1-based source band indexes, in image order.
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    band_names: tuple[str, ...]
    bands: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial shape ``(Y, X)`` in pixels."""
        return (self.height, self.width)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": self.dtype,
            "crs_wkt": self.crs.to_wkt(),
            "transform": list(self.transform)[:6],
            "nodata": self.nodata,
            "band_names": list(self.band_names),
            "bands": list(self.bands),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RasterInfo:
        return cls(
            path=raw["path"],
            width=int(raw["width"]),
            height=int(raw["height"]),
            count=int(raw["count"]),
            dtype=raw["dtype"],
            crs=CRS.from_wkt(raw["crs_wkt"]),
            transform=Affine(*raw["transform"]),
            nodata=raw["nodata"],
            band_names=tuple(raw["band_names"]),
            bands=tuple(raw["bands"]),
        )


def scene_stem(path_or_url: str | Path) -> str:
    """The scene name used for outputs: the file name without its last suffix (URLs included)."""
    name = str(path_or_url).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(name).stem or "scene"


def is_local_path(path_or_url: str | Path) -> bool:
    """True for a path on this machine's file system; False for URLs (``https://``, ``s3://``) and GDAL ``/vsi...`` paths."""
    text = str(path_or_url)
    return "://" not in text and not text.startswith("/vsi")


def mosaic_sources(path_or_url: str | Path) -> list[str]:
    """The files a local VRT mosaic reads its pixels from (GDAL's file list, the ``.vrt`` left out);
    ``[]`` for any other input. Their sizes and modification times belong to the input's fingerprint:
    a tile rewritten in place leaves the ``.vrt`` unchanged. Opens the ``.vrt`` only (not its tiles)."""
    text = str(path_or_url)
    if not is_local_path(text) or Path(text).suffix.lower() != ".vrt" or not Path(text).is_file():
        return []
    try:
        with known_warnings_ignored(), rasterio.open(text) as src:
            own = Path(text).resolve()
            return [f for f in src.files if Path(f).resolve() != own]
    except RasterioError:  # an unreadable VRT: reading it reports why
        return []


def check_exists(path_or_url: str | Path) -> None:
    """Raise :class:`InputError` for a local path that does not exist (URLs and ``/vsi`` paths are not checked)."""
    if is_local_path(path_or_url) and not Path(str(path_or_url)).exists():
        raise InputError(str(path_or_url), "file not found", "check the path")


def open_raster(path_or_url: str | Path) -> rasterio.DatasetReader:
    """Open a raster with rasterio, turning GDAL errors into an :class:`InputError`."""
    text = str(path_or_url)
    check_exists(text)
    try:
        with known_warnings_ignored():  # no georeferencing: refused with its own message (info_from_dataset)
            return rasterio.open(text)
    except RasterioError as exc:
        reason = gdal_reason(exc)
        if not is_local_path(text):
            raise InputError(text, f"cannot read this remote raster ({reason})", remote_fix(reason), transient=remote_transient(reason)) from exc
        raise InputError(text, f"not a readable raster ({reason})", "give a GeoTIFF/COG or another GDAL raster; re-download it if it is truncated") from exc


def remote_transient(reason: str) -> bool:
    """Whether GDAL's ``reason`` for failing on a URL may pass by itself: a 429 or 5xx answer, no connection, a timeout."""
    return bool(re.search(r"\b(429|5\d\d)\b", reason)) or _unreachable(reason)


def _unreachable(reason: str) -> bool:
    """Whether GDAL's ``reason`` says the server could not be reached (name, connection, timeout)."""
    lowered = reason.lower()
    return any(words in lowered for words in ("could not resolve", "failed to connect", "timed out", "timeout", "connection reset"))


def remote_fix(reason: str, *, reading: bool = False) -> str:
    """What to do about a URL GDAL could not open (or, ``reading``, stopped reading), from GDAL's
    ``reason`` (HTTP status, curl error...)."""
    lowered = reason.lower()
    if "range downloading not supported" in lowered:
        return ("the server does not answer HTTP range requests, which reading a raster in windows needs: "
                "download the file and give its local path, or serve it from a server or bucket that supports ranges")
    if re.search(r"\b(401|403)\b", reason):
        return "access denied: check the credentials (GDAL's AWS_*, AZURE_*, GS_* or GDAL_HTTP_* settings) or sign the URL again if it expired"
    if re.search(r"\b404\b", reason):
        return "no such object: check the URL"
    if re.search(r"\b5\d\d\b", reason):
        return "the server failed: run again later"
    if _unreachable(reason):
        return "the server could not be reached from this machine: check the URL, the network and any proxy (GDAL_HTTP_PROXY)"
    if reading:  # GDAL's words are libtiff's here ("Read error at row ..."): the HTTP status is not passed on
        return "the server stopped answering part-way (down, or a signed URL expired): run again later, or download the file and give its local path"
    return "check the URL and its credentials; or download the file and give its local path"


def probe_raster(
    path_or_url: str | Path,
    *,
    bands: Sequence[int] | None = None,
    in_channels: int | None = None,
    model_name: str | None = None,
) -> RasterInfo:
    """Read and validate a raster's header (no pixels): a regular georeferenced grid, real-valued
    bands, bands valid, band count fits the model.

    Args:
        path_or_url: a local path or anything GDAL opens (``https://``, ``s3://``, ``/vsi...``).
        bands: 1-based band indexes to keep, in order; None keeps all bands but alpha bands. An
            alpha band named here is fed as data (and marks no pixel transparent).
        in_channels: the number of channels the model needs; None skips the check.
        model_name: used in the band-count error message.

    Raises:
        InputError: not a raster, no CRS or geotransform (GCP- or RPC-only georeferencing included),
            complex bands, bad band indexes or band count != ``in_channels``.
    """
    with open_raster(path_or_url) as src:
        return info_from_dataset(src, str(path_or_url), bands, in_channels, model_name)


def info_from_dataset(src, path: str, bands, in_channels, model_name) -> RasterInfo:
    """:func:`probe_raster` of an open rasterio dataset ``src`` (``path``: the file as given, for messages)."""
    _check_georeferenced(src, path)
    alpha = alpha_bands(src)
    data_bands = tuple(b for b in range(1, src.count + 1) if b not in alpha)
    if not bands and not data_bands:
        raise InputError(path, "every band is an alpha (transparency) band: no image data", "give the image's data bands with --bands, or another file")
    selected = tuple(int(b) for b in bands) if bands else data_bands
    bad = [b for b in selected if not 1 <= b <= src.count]
    if bad:
        raise InputError(path, f"band(s) {bad} requested but the file has {src.count} band(s)", f"pick bands between 1 and {src.count} with --bands")
    _check_real(src, path, selected)
    if in_channels is not None and len(selected) != in_channels:
        model = f"model '{model_name}'" if model_name else "the model"
        if bands:
            what = f"{len(selected)} selected bands"
        elif alpha:
            what = f"{len(data_bands)} data band(s) plus {_alpha_words(alpha)}"
        else:
            what = f"{len(selected)} bands"
        raise InputError(path, f"{what}, {model} needs {in_channels}", _band_count_fix(src.count, data_bands, alpha, in_channels))
    dtype = np.result_type(*[np.dtype(src.dtypes[b - 1]) for b in selected])
    names = [src.descriptions[b - 1] or f"band_{b}" for b in selected]
    if len(set(names)) != len(names):
        names = [f"band_{b}" if names.count(n) > 1 else n for b, n in zip(selected, names)]
    nodata = src.nodatavals[selected[0] - 1]
    return RasterInfo(
        path=public_url(path),  # named in messages and logs: a signed URL without its credentials
        width=src.width,
        height=src.height,
        count=len(selected),
        dtype=dtype.name,
        crs=src.crs,
        transform=src.transform,
        nodata=None if nodata is None else float(nodata),
        band_names=tuple(names),
        bands=selected,
    )


def _check_georeferenced(src, path: str) -> None:
    """Refuse a raster without a regular georeferenced grid, naming what it has instead and the fix."""
    if src.transform == Affine.identity():  # GDAL's default: no geotransform
        gcps = src.gcps[0]
        if gcps:
            raise InputError(
                path,
                f"georeferenced by {len(gcps)} ground control points (GCPs), not by a geotransform: its pixels are not on a regular grid",
                "warp it to a regular grid first, e.g. `gdalwarp -r near FILE gridded.tif` (nearest neighbour keeps the pixel values; "
                "-t_srs EPSG:... picks the CRS), and segment gridded.tif",
            )
        if src.rpcs:
            raise InputError(
                path,
                "georeferenced by rational polynomial coefficients (RPCs), not by a geotransform: its pixels are not on a regular grid",
                "orthorectify it to a regular grid first, e.g. `gdalwarp -rpc -r near FILE gridded.tif` (add `-to RPC_DEM=dem.tif` "
                "for terrain), and segment gridded.tif",
            )
    if src.crs is None and _disguised(src, path):
        raise InputError(
            path, f"a {src.driver} image with a GeoTIFF name and no CRS (not a GeoTIFF)", "give the real GeoTIFF/COG; re-export or re-download this one"
        )
    if src.crs is None:
        raise InputError(
            path, "no CRS: the raster is not georeferenced", "assign one, e.g. `gdal_edit.py -a_srs EPSG:32618 FILE`, or export it as a GeoTIFF with its CRS"
        )
    if src.transform == Affine.identity():
        raise InputError(
            path,
            "no geotransform: the raster is not georeferenced",
            "assign one, e.g. `gdal_edit.py -a_ullr ULX ULY LRX LRY FILE`, or export it as a GeoTIFF with its georeferencing",
        )


def _check_real(src, path: str, selected: Sequence[int]) -> None:
    """Refuse complex (or other non-real) bands before any work: the models take real values, and
    numpy would drop the imaginary part (or fail) deep inside the run."""
    for b in selected:
        name = src.dtypes[b - 1]
        try:
            kind = np.dtype(name).kind
        except TypeError:  # rasterio's complex_int16 has no numpy dtype
            kind = "c" if name.startswith("complex") else "?"
        if kind == "c":
            raise InputError(
                path,
                f"band {b} holds complex values ({name}, e.g. SAR SLC): the models take real values",
                'convert it first, e.g. to the magnitude with `gdal_calc.py -A FILE --allBands=A --calc="abs(A)" --type=Float32 --outfile=amplitude.tif` '
                "(or a VRT band with the 'mod' pixel function), and segment that",
            )
        if kind not in "biuf":
            raise InputError(
                path,
                f"band {b} has data type {name}, which segpipe cannot read as numbers",
                "convert it to an integer or float type, e.g. with `gdal_translate -ot Float32`",
            )


def alpha_bands(src) -> tuple[int, ...]:
    """1-based indexes of the bands that are alpha (transparency): tagged alpha and holding a mask.

    GDAL tags the 4th band of every 4-band 8-bit GeoTIFF written with its defaults (rasterio's too)
    alpha, so an RGBN scene's near-infrared band usually carries the tag. A band tagged alpha counts
    as alpha only when at least 99 % of a decimated sample (about 512 x 512, read from overviews where
    there are some) is fully transparent (0) or fully opaque (the dtype's maximum); a band holding a
    range of values is image data and is kept (logged). Anti-aliased edges of a real alpha band stay
    well under 1 % of a scene.
    """
    from rasterio.enums import ColorInterp

    tagged = [b for b, interp in enumerate(src.colorinterp, start=1) if interp == ColorInterp.alpha]
    return tuple(b for b in tagged if _holds_a_mask(src, b))


ALPHA_MASK_SHARE = 0.99
"""Share of a tagged band's sample that must be 0 or the dtype's maximum for it to count as alpha."""


def _holds_a_mask(src, band: int) -> bool:
    """Whether the band ``band`` (tagged alpha) holds transparency, not image data (see :func:`alpha_bands`)."""
    from rasterio.enums import Resampling

    dtype = np.dtype(src.dtypes[band - 1])
    if dtype.kind not in "iu":
        return True  # float alpha (0..1) is rare; keep GDAL's tag
    step = max(1, -(-max(src.height, src.width) // 512))
    shape = (-(-src.height // step), -(-src.width // step))
    try:
        with known_warnings_ignored():
            sample = src.read(band, out_shape=shape, resampling=Resampling.nearest, masked=False)
    except RasterioError as exc:
        raise InputError(
            src.name, f"read failed at rows 0..{src.height} (a sample of band {band}): the file is truncated or corrupt ({gdal_reason(exc)})",
            "re-download or re-export the file",
        ) from exc
    share = float(np.isin(sample, (0, np.iinfo(dtype).max)).mean())
    if share < ALPHA_MASK_SHARE:
        log.info(
            "%s: band %d is tagged alpha but holds image data (%.0f %% of a sample is neither 0 nor %d): read as a data band",
            src.name, band, 100 * (1 - share), np.iinfo(dtype).max,
        )
        return False
    return True


def _alpha_words(alpha: Sequence[int]) -> str:
    if len(alpha) == 1:
        return f"an alpha band (band {alpha[0]})"
    return f"{len(alpha)} alpha bands (bands {', '.join(map(str, alpha))})"


def _band_count_fix(count: int, data_bands: Sequence[int], alpha: Sequence[int], in_channels: int) -> str:
    n = len(data_bands)
    if n >= in_channels:
        fix = f"pick bands with --bands {','.join(str(b) for b in data_bands[:in_channels])}"
    else:
        repeated = [*data_bands] + [data_bands[-1]] * (in_channels - n)
        fix = (
            f"give an image with {in_channels} bands, repeat bands to make {in_channels} with --bands "
            f"(e.g. --bands {','.join(map(str, repeated))}), or use a model for {n}"
        )
    if alpha and n < in_channels <= count:  # e.g. an RGBN file whose near-infrared band is tagged alpha
        everything = ",".join(str(b) for b in range(1, in_channels + 1))
        fix += (
            f"; if the alpha band holds image data (e.g. near-infrared: GDAL tags the 4th band of a 4-band 8-bit GeoTIFF alpha unless told "
            f"otherwise), feed it with --bands {everything}"
        )
    return fix


def _disguised(src, path: str) -> bool:
    """True for a file named ``.tif``/``.tiff`` that GDAL reads as another format (a PNG or JPEG renamed)."""
    return path.lower().split("?", 1)[0].endswith((".tif", ".tiff")) and src.driver not in ("GTiff", "COG", "VRT")


def gdal_reason(exc: Exception) -> str:
    """GDAL's own words for ``exc``: the innermost message of the exception chain (rasterio's
    outer ``Read failed. See previous exception for details.`` says nothing by itself)."""
    reasons = []
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause).strip()
        if text and "see previous exception" not in text.lower():
            reasons.append(text.splitlines()[0])
        cause = cause.__cause__ or cause.__context__
    return (reasons[-1] if reasons else type(exc).__name__)[:200]
