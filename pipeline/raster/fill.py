"""What the model sees where the input is invalid: a neutral value, never the raw nodata.

The ingest store keeps the raw values and a per-band validity mask ``band_mask`` ``(C, Y, X)``
(:mod:`pipeline.raster.ingest`). A model that is not per-pixel (any U-Net, DeepLab, SegFormer) mixes
each pixel's neighbours into its logits, and the windows' gaussian blend mixes whole windows: a
NaN hole made every window that touched it NaN, and a -9999 fill shifted labels up to ~100 px away.
:class:`FilledImage` reads the image with every invalid band value replaced by that band's *fill*,
the raw value the spec's normalisation maps to 0 (:func:`models.normalize.neutral_values`: 0 for
``none`` and ``scale``, the band mean for ``meanstd`` and ``zscore``, ``min`` for ``window``), so
the labels of valid pixels do not depend on what the hole holds. The engine reads it like any
``(C, Y, X)`` source; :class:`FilledRef` is the same for Dask workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FilledImage:
    """``image`` ``(C, Y, X)`` read with the values where ``valid`` ``(C, Y, X)`` is False set to ``fill[c]``.

    Sliced like the engine slices its source, ``[:, rows, cols]`` (all channels). A region without an
    invalid value comes back as stored; one with invalid values is a copy, in the image's dtype when
    it holds every fill value exactly (0 in uint8, an integer mean in uint16), else float32, so the
    normalisation gives exactly 0 there.
    """

    image: Any
    valid: Any
    fill: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        raw = np.asarray(self.image[key])
        valid = np.asarray(self.valid[key], dtype=bool)
        if valid.all():
            return raw
        if raw.shape[0] != len(self.fill):
            raise ValueError(f"FilledImage reads all {len(self.fill)} channels at once, got {raw.shape[0]}")
        out = raw.copy() if holds_exactly(raw.dtype, self.fill) else raw.astype(np.float32)
        for c, value in enumerate(self.fill):
            np.copyto(out[c], value, where=~valid[c], casting="unsafe")
        return out


def holds_exactly(dtype: np.dtype, values: Sequence[float]) -> bool:
    """True when ``dtype`` stores every value so that its float32 cast equals the value's (what the normaliser compares)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return all(float(v).is_integer() and limits.min <= v <= limits.max for v in values)
    return all(np.float32(dtype.type(v)) == np.float32(v) for v in values)


def open_filled(store: str | Path, fill: Sequence[float], *, cache: bool = True) -> FilledImage:
    """The ingest store's image with invalid values read as ``fill`` (one value per band).

    ``cache``: decode each image and mask chunk once for neighbouring blocks (:class:`~pipeline.chunk_cache.ChunkCache`,
    as the engine's own reader does for a plain zarr source); off for one-region readers (Dask tasks).
    """
    import zarr

    group = zarr.open_group(store, mode="r", use_consolidated=False)
    image, valid = group["image"], group["band_mask"]
    if cache:  # both: uncached, each band_mask chunk was decoded for every block whose halo touched it (3.7x the read)
        from pipeline.chunk_cache import ChunkCache
        from pipeline.grid import STRIP_BLOCKS

        image, valid = ChunkCache(image, capacity=2 * STRIP_BLOCKS + 4), ChunkCache(valid, capacity=2 * STRIP_BLOCKS + 4)
    return FilledImage(image, valid, tuple(float(v) for v in fill))


@dataclass(frozen=True)
class FilledRef:
    """:func:`open_filled` by reference, for Dask workers (``store``: a path every worker can open)."""

    store: str
    fill: tuple[float, ...]

    def open(self, mode: str = "r") -> FilledImage:
        if mode != "r":
            raise ValueError(f"{self.store}: a filled image is read-only (mode {mode!r})")
        return open_filled(self.store, self.fill, cache=False)
