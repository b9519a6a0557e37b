"""From the native grid to the model's grid and back, and intensity normalisation.

Two grid steps, both planned once by :func:`plan_grid` into a :class:`GridMapping`:

1. **Reorientation** to ``spec.orientation`` (e.g. ``"RAS"``; ``None`` keeps the native axes): a pure
   permutation/flip of the axes (``nibabel.orientations``), hence exactly invertible. Oblique grids
   go to the nearest axes and stay oblique; no interpolation.
2. **Resampling** to ``spec.spacing`` ``(z, y, x)`` mm (``None`` = no resampling): the model grid has
   exactly that spacing, ``round(n * old / new)`` voxels per axis, and its centre on the centre of the
   reoriented grid; model voxel ``m`` sits at reoriented index ``o = c_o + (m - c_m) * new / old``
   (``c = (n - 1) / 2``). Images are interpolated trilinearly (separable, edge-clamped, identical to
   ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``).

On the way back, *logits* (not label ids) are interpolated to the reoriented native grid slab by slab,
argmaxed, and the labels permuted back: the result is on exactly the input's grid by construction.

Arrays are ``(Z, Y, X)`` (logits ``(K, Z, Y, X)``); affines map ``(x, y, z, 1)`` to RAS mm (see
:mod:`pipeline.volume.volume`).

Why not MONAI ``Orientation``/``Spacing``: they work on whole in-memory tensors, so resampling ``K``
logit channels back would need ``K`` full volumes at once, and their inverse needs the forward
transform's metadata trail. The separable maths here is short, streams slab by slab, and is tested
against scipy. Intensity maps come from :mod:`models.normalize` and equal MONAI's
``ScaleIntensityRange(clip=True)`` and ``NormalizeIntensity(subtrahend, divisor)`` (tested here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ModelSpecError
from pipeline.volume.volume import spacing_zyx

# memory for one slab of interpolated logits when mapping back (bytes)
SLAB_BYTES = 256 * 2**20


@dataclass(frozen=True, eq=False)
class GridMapping:
    """Native grid -> reoriented grid -> model grid. Shapes ``(Z, Y, X)``, affines ``(x, y, z, 1)`` -> RAS mm.

    Attributes:
        native_shape, native_affine: the input's grid.
        ornt: nibabel orientation transform (3, 2) taking native ``(x, y, z)`` axes to the reoriented ones.
        oriented_shape, oriented_affine: after reorientation (same voxels, permuted/flipped).
        model_shape, model_affine: the grid the network sees.
        scale: ``(z, y, x)`` reoriented voxels per model voxel (``new_spacing / old_spacing``); 1 = no resampling.
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    ornt: np.ndarray
    oriented_shape: tuple[int, int, int]
    oriented_affine: np.ndarray
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray
    scale: tuple[float, float, float]

    @property
    def reoriented(self) -> bool:
        return not np.array_equal(self.ornt, _identity_ornt())

    @property
    def resampled(self) -> bool:
        return self.model_shape != self.oriented_shape or any(s != 1.0 for s in self.scale)

    def model_to_oriented(self, axis: int, index: np.ndarray) -> np.ndarray:
        """Reoriented-grid index (fractional) of model-grid ``index`` along ``axis`` (0 = z)."""
        c_o = (self.oriented_shape[axis] - 1) / 2
        c_m = (self.model_shape[axis] - 1) / 2
        return c_o + (np.asarray(index, dtype=np.float64) - c_m) * self.scale[axis]

    def oriented_to_model(self, axis: int, index: np.ndarray) -> np.ndarray:
        """Model-grid index (fractional) of reoriented-grid ``index`` along ``axis`` (0 = z)."""
        c_o = (self.oriented_shape[axis] - 1) / 2
        c_m = (self.model_shape[axis] - 1) / 2
        return c_m + (np.asarray(index, dtype=np.float64) - c_o) / self.scale[axis]


def _identity_ornt() -> np.ndarray:
    return np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


def parse_orientation(code: str | None, where: Any = "<model spec>") -> str | None:
    """Validate an orientation code such as ``"RAS"``/``"LPS"`` (one of L/R, A/P, S/I each)."""
    if code is None:
        return None
    code = str(code).upper()
    pairs = ("LR", "AP", "SI")
    if len(code) != 3 or sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in code) != [0, 1, 2]:
        raise ModelSpecError(where, f"orientation {code!r} is not a valid axis code", "use three letters, one each of L/R, A/P, S/I, e.g. RAS or LPS, or null")
    return code


def plan_grid(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    orientation: str | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> GridMapping:
    """Plan the native -> model grid mapping.

    Args:
        shape: native ``(Z, Y, X)``.
        affine: native ``(x, y, z, 1)`` -> RAS mm.
        orientation: target axis codes of ``(x, y, z)`` (``"RAS"``), or None to keep the native axes.
        spacing: target voxel size ``(z, y, x)`` mm, or None to keep the native spacing.
    """
    from nibabel import orientations as nio

    affine = np.asarray(affine, dtype=np.float64)
    code = parse_orientation(orientation)
    if code is None:
        ornt = _identity_ornt()
    else:
        ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(code)))
    xyz = tuple(reversed(shape))
    oriented_affine = affine @ nio.inv_ornt_aff(ornt, xyz)
    oriented_xyz = [0, 0, 0]
    for axis, (new_axis, _) in enumerate(ornt):
        oriented_xyz[int(new_axis)] = xyz[axis]
    oriented_shape = tuple(reversed(oriented_xyz))
    old = spacing_zyx(oriented_affine)
    if spacing is None or np.allclose(old, spacing, rtol=1e-6, atol=0):
        model_shape, scale = oriented_shape, (1.0, 1.0, 1.0)
    else:
        model_shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(oriented_shape, old, spacing))
        scale = tuple(float(s / o) for o, s in zip(old, spacing))
    # model (x, y, z) index -> reoriented (x, y, z) index: diag(scale) m + (c_o - c_m * scale)
    to_oriented = np.eye(4)
    for zyx_axis in range(3):
        xyz_axis = 2 - zyx_axis
        c_o = (oriented_shape[zyx_axis] - 1) / 2
        c_m = (model_shape[zyx_axis] - 1) / 2
        to_oriented[xyz_axis, xyz_axis] = scale[zyx_axis]
        to_oriented[xyz_axis, 3] = c_o - c_m * scale[zyx_axis]
    return GridMapping(
        native_shape=tuple(int(s) for s in shape),
        native_affine=affine,
        ornt=ornt,
        oriented_shape=tuple(int(s) for s in oriented_shape),
        oriented_affine=oriented_affine,
        model_shape=tuple(int(s) for s in model_shape),
        model_affine=oriented_affine @ to_oriented,
        scale=scale,
    )


def reorient(data: np.ndarray, grid: GridMapping) -> np.ndarray:
    """Native ``(..., Z, Y, X)`` -> reoriented ``(..., Z', Y', X')`` (exact permutation/flip, C-contiguous copy)."""
    return _apply_ornt(data, grid.ornt)


def unreorient(data: np.ndarray, grid: GridMapping) -> np.ndarray:
    """Reoriented ``(..., Z', Y', X')`` -> native ``(..., Z, Y, X)``: the exact inverse of :func:`reorient`."""
    return _apply_ornt(data, invert_ornt(grid.ornt))


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform undoing ``ornt`` (row ``i`` = ``[new axis of axis i, flip]``)."""
    inverse = np.zeros_like(np.asarray(ornt, dtype=np.float64))
    for axis, (new_axis, flip) in enumerate(ornt):
        inverse[int(new_axis)] = (axis, flip)
    return inverse


def _apply_ornt(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    from nibabel import orientations as nio

    if np.array_equal(ornt, _identity_ornt()):
        return data
    lead = data.ndim - 3
    zyx = (lead, lead + 1, lead + 2)
    xyz = np.moveaxis(data, zyx[::-1], (0, 1, 2))  # (x, y, z, ...)
    out = nio.apply_orientation(xyz, ornt)
    return np.ascontiguousarray(np.moveaxis(out, (0, 1, 2), zyx[::-1]))


def resample_axis(data: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``data`` along ``axis`` at fractional indices ``coords`` (clamped to the edges)."""
    n = data.shape[axis]
    coords = np.clip(np.asarray(coords, dtype=np.float64), 0, n - 1)
    if n == 1:
        return np.take(data, np.zeros(len(coords), dtype=np.intp), axis=axis).astype(np.float32, copy=False)
    i0 = np.minimum(np.floor(coords).astype(np.intp), n - 2)
    w = (coords - i0).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = len(coords)
    w = w.reshape(shape)
    a0 = np.take(data, i0, axis=axis).astype(np.float32, copy=False)
    a1 = np.take(data, i0 + 1, axis=axis).astype(np.float32, copy=False)
    return a0 + (a1 - a0) * w


def to_model(data: np.ndarray, grid: GridMapping) -> np.ndarray:
    """Native image ``(Z, Y, X)`` -> model grid ``(Z, Y, X)`` float32 (reorient, then trilinear resampling)."""
    out = reorient(data, grid)
    if not grid.resampled:
        return np.ascontiguousarray(out, dtype=np.float32)
    for axis in range(3):
        coords = grid.model_to_oriented(axis, np.arange(grid.model_shape[axis]))
        out = resample_axis(out, axis, coords)
    return np.ascontiguousarray(out, dtype=np.float32)


def labels_to_native(labels: np.ndarray, grid: GridMapping) -> np.ndarray:
    """Labels on the model grid (no resampling) ``(Z, Y, X)`` -> the native grid (exact permutation)."""
    if grid.resampled:
        raise ValueError("labels cannot be mapped back across a resampling; map logits with logits_to_native")
    return unreorient(np.asarray(labels), grid)


def logits_to_native(
    logits: Any,
    grid: GridMapping,
    class_ids: tuple[int, ...],
    dtype: str,
    *,
    slab_bytes: int = SLAB_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Mean logits on the model grid ``(K, Zm, Ym, Xm)`` (numpy or zarr) -> native labels ``(Z, Y, X)``.

    Logits are interpolated trilinearly to the reoriented native grid, slab by slab along z (memory
    ~``slab_bytes``), argmaxed (ties -> first class) and written as ``class_ids``; then un-reoriented.
    """
    k = int(logits.shape[0])
    zo, yo, xo = grid.oriented_shape
    ids = np.asarray(class_ids, dtype=np.int64)
    out = np.empty(grid.oriented_shape, dtype=dtype)
    y_coords = grid.oriented_to_model(1, np.arange(yo))
    x_coords = grid.oriented_to_model(2, np.arange(xo))
    slab = max(1, int(slab_bytes // max(1, 3 * 4 * k * yo * xo)))
    zm = grid.model_shape[0]
    for z0 in range(0, zo, slab):
        z1 = min(zo, z0 + slab)
        zc = np.clip(grid.oriented_to_model(0, np.arange(z0, z1)), 0, zm - 1)
        r0 = int(math.floor(zc.min()))
        r1 = min(zm, int(math.floor(zc.max())) + 2)
        part = np.asarray(logits[:, r0:r1], dtype=np.float32)
        part = resample_axis(part, 1, zc - r0)
        part = resample_axis(part, 2, y_coords)
        part = resample_axis(part, 3, x_coords)
        out[z0:z1] = ids[np.argmax(part, axis=0)]
        if progress is not None:
            progress(z1, zo)
    return unreorient(out, grid)


def intensity_for(spec: Any, data: np.ndarray, *, nodata: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The pointwise intensity map ``spec.normalize`` asks for, statistics taken once from the whole ``data``.

    * ``window``: clip to ``[min, max]``, scale to ``[0, 1]`` (CT, in HU);
    * ``zscore``: ``(x - mean) / std`` with mean/std over the foreground (voxels != 0, as MONAI's
      ``NormalizeIntensity(nonzero=True)``; all voxels if none) outside ``nodata``, applied to every voxel (MR);
    * ``meanstd``, ``scale``, ``none``: fixed maps from the spec.

    Returns a picklable callable ``(C, Z, Y, X) -> float32`` for the engine's ``preprocess`` (see
    :mod:`models.normalize`, shared with the raster path).

    Args:
        spec: the model spec.
        data: the native volume ``(Z, Y, X)`` (statistics are computed on the native grid).
        nodata: bool ``(Z, Y, X)``, voxels without image data, left out of the statistics; None for none.
    """
    from models.normalize import foreground_stats, normalizer

    stats = None
    if spec.normalize.kind == "zscore":
        values = np.asarray(data) if nodata is None else np.asarray(data)[~nodata]
        stats = foreground_stats(values[None])
    return normalizer(spec.normalize, stats)
