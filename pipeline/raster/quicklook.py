"""A PNG quicklook per scene: the image as an RGB composite with the labels overlaid and a legend.

Both rasters are read decimated (``out_shape``, so GDAL uses overviews where the files have them),
or the image comes from the preview gathered during ingest: memory is bounded by the quicklook
size, not the scene. :func:`rgb_bands` picks red, green and blue by the bands' colour interpretation.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from models.spec import ClassInfo
from pipeline.known_warnings import known_warnings_ignored

MAX_SIZE = 1024  # pixels on the long side
STRETCH = (2.0, 98.0)  # percentiles mapped to black and white
# widest image part of the figure, as a multiple of its height: a thin strip (1 x 300 px) otherwise made a
# 1800-inch, 198,000-pixel-wide figure (a minute and ~0.5 GB to render); it is drawn small in a bounded figure instead
MAX_ASPECT = 3.0


def write_quicklook(
    image: str | Path,
    labels_tif: str | Path,
    classes: Sequence[ClassInfo],
    out_png: str | Path,
    *,
    rgb: Sequence[int] | None = None,
    max_size: int = MAX_SIZE,
    alpha: float = 0.45,
    preview: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Render ``image`` (bands ``rgb``, 1-based; default the first three, or the first as grey)
    with ``labels_tif`` overlaid in the class colours, and a legend. Written atomically.

    ``preview``: a decimated ``(C, y, x)`` image and its valid mask, ``(C, y, x)`` per band or ``(y, x)``
    per pixel, already in memory (from ingest); ``rgb`` then indexes its channels (1-based) and
    ``image`` is only used for the title. Invalid values (and NaN/inf) are black in their channel.

    Returns:
        ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    out_png = Path(out_png)
    with rasterio.open(labels_tif) as lab_src:
        if preview is not None:
            shape = preview[1].shape[-2:]
        else:
            scale = min(1.0, max_size / max(lab_src.width, lab_src.height))
            shape = (max(1, round(lab_src.height * scale)), max(1, round(lab_src.width * scale)))
        labels = lab_src.read(1, out_shape=shape, resampling=Resampling.nearest)
    if preview is not None:
        bands = [b - 1 for b in (rgb or ([1, 2, 3] if preview[0].shape[0] >= 3 else [1]))]
        valid = preview[1] if preview[1].ndim == 3 else np.broadcast_to(preview[1], preview[0].shape)
        base = _stretch(np.ma.array([preview[0][b] for b in bands], mask=[~valid[b] for b in bands]), shape)
    else:
        base = _composite(image, rgb, shape)
    ids = np.array([c.id for c in classes])
    index = np.full(labels.shape, -1)
    for i, cid in enumerate(ids):
        index[labels == cid] = i
    overlay = np.ma.masked_less(index, 0)
    cmap = ListedColormap([np.array(c.rgb) / 255.0 for c in classes])
    height_in = 6.0
    width_in = max(4.0, height_in * min(shape[1] / shape[0], MAX_ASPECT)) + 2.2
    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=110)
    try:
        ax.imshow(base, interpolation="nearest")
        ax.imshow(overlay, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, alpha=alpha, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(Path(str(image)).name, fontsize=9)
        handles = [Patch(facecolor=np.array(c.rgb) / 255.0, edgecolor="black", label=f"{c.id} {c.name}") for c in classes]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="classes")
        fig.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_png.with_name(f".{out_png.name}.{uuid.uuid4().hex[:8]}.png")
        try:
            fig.savefig(tmp)
            os.replace(tmp, out_png)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return out_png


def _composite(image: str | Path, rgb: Sequence[int] | None, shape: tuple[int, int]) -> np.ndarray:
    """``(Y, X, 3)`` float in [0, 1], percentile-stretched per band over valid pixels; nodata is black."""
    with rasterio.open(image) as src, known_warnings_ignored():  # alpha flag next to nodata: nodata decides
        bands = list(rgb) if rgb else ([1, 2, 3] if src.count >= 3 else [1])
        data = src.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.average, masked=True)
    return _stretch(data, shape)


def _stretch(data: np.ma.MaskedArray, shape: tuple[int, int]) -> np.ndarray:
    """``(B, Y, X)`` masked bands -> ``(Y, X, 3)`` float in [0, 1], percentile-stretched; masked (and NaN/inf) is black."""
    out = np.zeros((*shape, len(data)))
    for i, band in enumerate(data):
        band = np.ma.masked_invalid(band) if band.dtype.kind == "f" else band  # undeclared NaN is no value either
        values = band.compressed()
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, STRETCH)
        scaled = (band.filled(lo).astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)
        out[..., i] = np.where(np.ma.getmaskarray(band), 0.0, np.clip(scaled, 0.0, 1.0))
    return np.repeat(out, 3, axis=2) if len(data) == 1 else out


def rgb_bands(image: str | Path, bands: Sequence[int]) -> list[int]:
    """1-based positions within ``bands`` to show as red, green, blue.

    Uses the bands' colour interpretation when the file declares red, green and blue (a B,G,R,NIR
    scene is shown in true colour); otherwise the first three bands, or the first as grey, leaving
    out bands tagged alpha (fed as data with ``--bands``) while enough others remain.
    """
    from rasterio.enums import ColorInterp

    with rasterio.open(image) as src:
        interp = [src.colorinterp[b - 1] for b in bands]
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return [interp.index(c) + 1 for c in wanted]
    colour = [i for i, c in enumerate(interp, start=1) if c != ColorInterp.alpha] or list(range(1, len(bands) + 1))
    return colour[:3] if len(colour) >= 3 else colour[:1]
