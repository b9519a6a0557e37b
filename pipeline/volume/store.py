"""Volumes as zarr v3 arrays: the engine's source, chunked on the engine's 3D blocks.

A volume store is one zarr v3 array of shape ``(1, Z, Y, X)`` (channel first, as the engine reads
sources), float32, chunks ``(1, *block)`` clipped to the shape, so each engine block reads whole
chunks. Attributes: ``affine`` (4x4 list, voxel ``(x, y, z, 1)`` -> RAS mm), ``spacing_zyx`` (mm),
``orientation`` (axis codes of x, y, z), ``axes`` (``["c", "z", "y", "x"]``) and any extra ``attrs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.volume.volume import orientation_code, spacing_zyx
from pipeline.zarr_write import fast_writes

AXES = ("c", "z", "y", "x")


@dataclass(frozen=True, eq=False)
class VolumeStore:
    """An opened volume store: the zarr array ``(1, Z, Y, X)`` and its geometry."""

    array: Any
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]


def write_volume_store(
    data: np.ndarray,
    path: str | Path,
    *,
    affine: np.ndarray,
    block: tuple[int, int, int],
    attrs: dict[str, Any] | None = None,
) -> VolumeStore:
    """Write ``data`` ``(Z, Y, X)`` to a new zarr v3 store at ``path`` (replacing any), slab by slab.

    Args:
        data: intensities ``(Z, Y, X)``, stored as float32.
        path: folder of the store (``*.zarr``).
        affine: ``(x, y, z, 1)`` -> RAS mm of ``data``'s grid.
        block: the engine's block ``(z, y, x)`` voxels; chunks are ``(1, *min(block, shape))``.
        attrs: extra JSON-serialisable attributes (source path, modality, ...).
    """
    import zarr
    from zarr.codecs import BloscCodec

    if data.ndim != 3:
        raise ValueError(f"write_volume_store needs (Z, Y, X), got shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    chunks = (1, *(max(1, min(int(b), int(s))) for b, s in zip(block, data.shape)))
    # blosc lz4 with byte shuffle: ~5x faster to write than zarr's default zstd on CT (0.35 vs 1.6 s for
    # 512x512x300 float32), ~40 % larger; this store is work data, written once per study
    array = zarr.create_array(
        store=str(path), shape=(1, *data.shape), chunks=chunks, dtype="float32", zarr_format=3, overwrite=True, fill_value=0.0,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    )
    array = fast_writes(array)
    for z0 in range(0, data.shape[0], chunks[1]):
        z1 = min(data.shape[0], z0 + chunks[1])
        array[:, z0:z1] = np.asarray(data[z0:z1], dtype=np.float32)[None]
    array.attrs.update(
        {
            "affine": affine.tolist(),
            "spacing_zyx": list(spacing_zyx(affine)),
            "orientation": orientation_code(affine),
            "axes": list(AXES),
            **(attrs or {}),
        }
    )
    return VolumeStore(array=array, affine=affine, spacing=spacing_zyx(affine))


def open_volume_store(path: str | Path) -> VolumeStore:
    """Open a store written by :func:`write_volume_store` (read-only)."""
    import zarr

    try:
        array = zarr.open_array(store=str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:  # zarr raises several types for "not an array"
        raise InputError(path, f"not a volume zarr store ({exc})", "write it with pipeline.volume.store.write_volume_store") from exc
    if "affine" not in array.attrs or array.ndim != 4:
        raise InputError(path, "zarr array without a (1, Z, Y, X) shape and an 'affine' attribute", "write it with write_volume_store")
    affine = np.asarray(array.attrs["affine"], dtype=np.float64)
    return VolumeStore(array=array, affine=affine, spacing=spacing_zyx(affine))
