"""segpipe volume: CT/MRI studies (NIfTI, DICOM series, enhanced multi-frame DICOM) -> labels on the native grid + statistics.

Axis convention: arrays are ``(Z, Y, X)``; affines map ``(x, y, z, 1)`` to RAS mm (nibabel), see
:mod:`pipeline.volume.volume`. Public API (imported lazily so ``segpipe --help`` stays fast):

* :func:`read_volume` -> :class:`Volume` (readers, dicom, enhanced)
* :func:`write_volume_store`, :func:`open_volume_store` (store: zarr v3)
* :func:`plan_grid`, :func:`to_model`, :func:`logits_to_native`, :func:`labels_to_native`, :func:`intensity_for` (preprocess)
* :class:`VolumeOptions`: device, block, force, series, 4D volume of each study (options)
* :func:`segment_volume`, :func:`segment_volumes` -> :class:`VolumeResult`, :class:`BatchReport`; :func:`study_done` (run, batch)
* :func:`study_statistics` -> :class:`StudyStats` (stats); :func:`merge_into_store`, :func:`open_stats`, :func:`volumes_by_label` (stats_zarr)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Volume": "pipeline.volume.volume",
    "DicomSource": "pipeline.volume.volume",
    "HeaderInfo": "pipeline.volume.volume",
    "read_volume": "pipeline.volume.readers",
    "study_stem": "pipeline.volume.readers",
    "write_volume_store": "pipeline.volume.store",
    "open_volume_store": "pipeline.volume.store",
    "GridMapping": "pipeline.volume.preprocess",
    "plan_grid": "pipeline.volume.preprocess",
    "to_model": "pipeline.volume.preprocess",
    "labels_to_native": "pipeline.volume.preprocess",
    "logits_to_native": "pipeline.volume.preprocess",
    "intensity_for": "pipeline.volume.preprocess",
    "VolumeOptions": "pipeline.volume.options",
    "segment_volume": "pipeline.volume.run",
    "segment_volumes": "pipeline.volume.batch",
    "study_done": "pipeline.volume.run",
    "VolumeResult": "pipeline.volume.run",
    "BatchReport": "pipeline.volume.batch",
    "StudyFailure": "pipeline.volume.batch",
    "StudyOutputs": "pipeline.volume.run",
    "LabelStats": "pipeline.volume.stats",
    "StudyStats": "pipeline.volume.stats",
    "study_statistics": "pipeline.volume.stats",
    "merge_into_store": "pipeline.volume.stats_zarr",
    "open_stats": "pipeline.volume.stats_zarr",
    "volumes_by_label": "pipeline.volume.stats_zarr",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.volume' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
