"""Intensity normalisation from a spec's ``normalize:`` entry, as a pointwise per-channel function.

The returned callable maps ``(C, *spatial)`` to float32 of the same shape and treats every pixel on
its own, so it can be applied region by region (the engine's ``preprocess``) with identical results.
Statistics that depend on the image (``zscore``) are computed once by the caller, e.g. with
:func:`foreground_stats` over the whole image, and passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.spec import Normalize
from pipeline.errors import ModelSpecError

Normalizer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class NormStats:
    """Per-channel statistics for ``zscore``: one mean and one std per channel (or one for all)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


def foreground_stats(image: np.ndarray) -> NormStats:
    """Per-channel mean and std over the foreground (values != 0; all values if a channel has none).

    Matches MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)`` statistics; a zero std becomes 1.

    Args:
        image: ``(C, *spatial)``.
    """
    means, stds = [], []
    for channel in np.asarray(image):
        values = channel[channel != 0]
        if values.size == 0:
            values = channel.reshape(-1)
        std = float(np.std(values, dtype=np.float64))
        means.append(float(np.mean(values, dtype=np.float64)))
        stds.append(std if std > 0 else 1.0)
    return NormStats(tuple(means), tuple(stds))


def normalizer(spec_normalize: Normalize, stats: NormStats | None = None) -> Normalizer:
    """Build the pointwise normalisation ``spec_normalize`` describes.

    Kinds: ``none`` (float32 cast), ``meanstd`` (``(x - mean[c]) / std[c]``; one value broadcasts to all
    channels), ``window`` (clip to ``[min, max]``, scale to ``[0, 1]``), ``scale`` (``x * factor``),
    ``zscore`` (like ``meanstd`` with ``stats`` measured on the image; required).

    Raises:
        ModelSpecError: missing or inconsistent values (e.g. ``window`` without ``min < max``).
    """
    n = spec_normalize
    if n.kind == "none":
        return _Affine((0.0,), (1.0,))
    if n.kind == "meanstd":
        return _Affine(*_check_meanstd(n.mean, n.std, "normalize meanstd"))
    if n.kind == "zscore":
        if stats is None:
            raise ModelSpecError(
                "normalize: zscore", "needs per-image statistics", "pass stats=foreground_stats(image) measured on the whole image"
            )
        return _Affine(*_check_meanstd(stats.mean, stats.std, "zscore stats"))
    if n.kind == "window":
        if n.min is None or n.max is None or not n.max > n.min:
            raise ModelSpecError("normalize: window", f"needs min < max, got min={n.min} max={n.max}", "write {kind: window, min: -1000, max: 1000}")
        return _Affine((n.min,), (n.max - n.min,), lo=n.min, hi=n.max)
    if n.kind == "scale":
        if n.factor == 0:
            raise ModelSpecError("normalize: scale", "factor 0 erases the image", "give a non-zero factor, e.g. 0.00392 for 8-bit data")
        return _Affine((0.0,), (1.0 / n.factor,))
    raise ModelSpecError("normalize", f"unknown kind {n.kind!r}", "use none, meanstd, window, zscore or scale")


def neutral_values(spec_normalize: Normalize, channels: int, stats: NormStats | None = None) -> tuple[float, ...]:
    """Per channel, the raw value that the normalisation maps to 0: what the model is given in place
    of an invalid (nodata, NaN, transparent) value, so that a hole feeds the convolutions around it
    the normalised data's neutral value instead of its raw fill (NaN, -9999, 0).

    By kind: ``none`` and ``scale``: 0; ``meanstd``: ``mean[c]``; ``zscore``: the image's band mean
    (``stats.mean[c]``); ``window``: ``min``. The normaliser maps each of them to exactly 0.0 in float32.

    Args:
        spec_normalize: the spec's ``normalize:`` entry.
        channels: C, the number of channels of the image.
        stats: the image statistics ``zscore`` needs (as for :func:`normalizer`).

    Raises:
        ModelSpecError: as :func:`normalizer`, or a number of mean/std values that fits neither 1 nor ``channels``.
    """
    return normalizer(spec_normalize, stats).neutral(channels)


@dataclass(frozen=True)
class _Affine:
    """``(clip(x, lo, hi) - shift[c]) / divisor[c]`` per channel; one value applies to every channel."""

    shift: tuple[float, ...]
    divisor: tuple[float, ...]
    lo: float | None = None
    hi: float | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = np.asarray(image, dtype=np.float32)
        self._check_channels(x.shape[0])
        if self.lo is not None:
            x = np.clip(x, np.float32(self.lo), np.float32(self.hi))
        per_channel = (-1,) + (1,) * (x.ndim - 1)
        shift = np.asarray(self.shift, dtype=np.float32).reshape(per_channel)
        divisor = np.asarray(self.divisor, dtype=np.float32).reshape(per_channel)
        if np.all(shift == 0) and np.all(divisor == 1):
            return x.copy() if x is image else x
        return ((x - shift) / divisor).astype(np.float32, copy=False)

    def neutral(self, channels: int) -> tuple[float, ...]:
        """Per channel, the raw value mapped to 0: ``shift[c]`` (inside ``[lo, hi]``: ``lo`` is the shift when clipping)."""
        self._check_channels(channels)
        return tuple(float(self.shift[c if len(self.shift) > 1 else 0]) for c in range(channels))

    def into(self, raw: np.ndarray, out: np.ndarray) -> None:
        """Normalise ``raw`` ``(C, *spatial)`` (any numeric dtype) into float32 ``out`` of the same shape
        and any strides, channel by channel, without temporaries; same values as calling it.

        The engine reads each block straight into its (channels-last) model buffer this way: one
        pass instead of a cast, a normalisation and a transpose into new arrays. numpy on purpose:
        the engine's reader thread must not start torch's OpenMP threads next to the model's (on
        2 cores that slowed the model's own forward by up to 1.5x).
        """
        self._check_channels(raw.shape[0])
        for c in range(raw.shape[0]):
            shift = np.float32(self.shift[c if len(self.shift) > 1 else 0])
            divisor = np.float32(self.divisor[c if len(self.divisor) > 1 else 0])
            dst = out[c]
            if self.lo is not None:
                np.clip(raw[c], np.float32(self.lo), np.float32(self.hi), out=dst, dtype=np.float32, casting="unsafe")
                src = dst
            else:
                src = raw[c]
            if shift != 0:
                np.subtract(src, shift, out=dst, dtype=np.float32, casting="unsafe")
                src = dst
            if divisor != 1:
                np.divide(src, divisor, out=dst, dtype=np.float32, casting="unsafe")
            elif src is not dst:
                np.copyto(dst, src, casting="unsafe")

    def _check_channels(self, channels: int) -> None:
        if len(self.shift) not in (1, channels):
            raise ModelSpecError(
                "normalize", f"{len(self.shift)} mean/std values for an image with {channels} channels", "give one value per channel, or one for all"
            )


def _check_meanstd(mean: tuple[float, ...], std: tuple[float, ...], what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not mean or len(mean) != len(std):
        raise ModelSpecError(what, f"needs as many means as stds (got {len(mean)} and {len(std)})", "write {kind: meanstd, mean: [...], std: [...]}")
    if min(std) <= 0:
        raise ModelSpecError(what, f"std values must be positive, got {list(std)}", "fix the std values")
    return tuple(mean), tuple(std)
