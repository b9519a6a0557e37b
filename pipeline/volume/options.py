"""The per-study options of :func:`pipeline.volume.run.segment_volume` and :func:`pipeline.volume.batch.segment_volumes`."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import InputError


@dataclass(frozen=True)
class VolumeOptions:
    """How to segment each study: plain values, checked once here, the same for every study of a batch.

    A frozen value of plain fields, so it pickles to Dask workers (one task per study) and compares
    equal when the settings do. What is not a plain setting stays a keyword argument of the calls:
    ``model`` (a live network, loaded once per process; Dask workers load their own), ``progress``
    (a callback of the caller's process) and ``dask_address`` (where a batch runs, not how a study is
    segmented: batches only).

    Args:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a string, as for
            :class:`pipeline.engine.EngineConfig` (``cuda:N`` has no ``Literal``). Whether the device
            exists is checked where the model is loaded: a Dask worker may have the GPU this machine lacks.
        block: engine block ``(z, y, x)`` in voxels on the model grid; None = the engine's default.
            Any sequence of three positive ints is accepted and stored as a tuple.
        force: redo a study whose outputs are complete and were made by the same model spec from the
            same input (one made with another spec or settings, or from an input changed since, is
            redone anyway), and replace outputs made from another input with the same name (an
            error without it). A flag, like ``--force`` and the flow's ``force`` parameter it carries.
        series_uid: DICOM folders holding several series: the SeriesInstanceUID to read.
        volume_index: 4D NIfTI: the volume to read (0-based); None for 3D images.

    Raises:
        InputError: ``block`` is not three positive ints, ``volume_index`` is negative or not an
            int, or ``series_uid`` is empty (the message names the value and the fix).
    """

    device: str = "auto"
    block: tuple[int, int, int] | None = None
    force: bool = False
    series_uid: str | None = None
    volume_index: int | None = None

    def __post_init__(self) -> None:
        if self.block is not None:
            object.__setattr__(self, "block", _block(self.block))
        if self.volume_index is not None:
            object.__setattr__(self, "volume_index", _volume_index(self.volume_index))
        if self.series_uid is not None and (not isinstance(self.series_uid, str) or not self.series_uid.strip()):
            raise InputError(
                "series_uid", f"{self.series_uid!r} is not a SeriesInstanceUID",
                "give the UID of one series in the DICOM folder (the error of a folder with several lists them), or None",
            )


DEFAULT_OPTIONS = VolumeOptions()
"""The defaults: ``auto`` device, the engine's block, no force, the folder's only series, a 3D image.
One shared instance (frozen, so safe to share) used as the default argument of the segment calls."""


def _block(value: Sequence[int]) -> tuple[int, int, int]:
    fix = "give block=(z, y, x) voxels on the model grid, each at least 1 (e.g. (64, 128, 128)), or None for the engine's default"
    try:
        sizes = tuple(_int(v) for v in value)
    except TypeError:
        raise InputError("block", f"{value!r} is not three sizes", fix) from None
    if len(sizes) != 3 or min(sizes) < 1:
        raise InputError("block", f"{value!r} is not three positive sizes", fix)
    return sizes  # type: ignore[return-value]


def _volume_index(value: int) -> int:
    fix = "give the 0-based volume of a 4D NIfTI (0 for the first), or None for a 3D image"
    try:
        index = _int(value)
    except TypeError:
        raise InputError("volume_index", f"{value!r} is not a volume number", fix) from None
    if index < 0:
        raise InputError("volume_index", f"{index} is negative", fix)
    return index


def _int(value: object) -> int:
    """``value`` as an int (numpy ints too); TypeError for bools, floats and anything else."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a bool")
    return operator.index(value)  # type: ignore[arg-type]
