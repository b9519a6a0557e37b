"""One study's outputs: labels NIfTI, sidecars, colour tables, DICOM SEG, ``S.stats.json`` and its row of ``stats.zarr``.

The old ``S.stats.json`` is removed first and the new one written last (it marks the study done); a
failure removes the study's files. A user's own ``S.labels.nii.gz`` is not replaced, and the
half-written files of a killed run are removed (only names segpipe made).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.spec import ModelSpec
from pipeline.errors import InputError
from pipeline.volume.stats import StudyStats, write_stats_json
from pipeline.volume.stats_zarr import merge_into_store, stored_studies
from pipeline.volume.volume import Volume
from pipeline.volume.writers import (
    LABELS_DESCRIP,
    itksnap_label_table,
    sidecar_json,
    slicer_color_table,
    stale_temporaries,
    write_dicom_seg,
    write_labels_nifti,
    write_text_atomic,
)

if TYPE_CHECKING:
    from pipeline.volume.run import StudyOutputs

log = logging.getLogger(__name__)


def refuse_foreign_labels(path: Path) -> None:
    """Refuse to replace a ``S.labels.nii.gz`` that segpipe did not write (its header description is
    not ``segpipe labels``): a user's own segmentation under that name was silently overwritten.

    Raises:
        InputError: naming the file and the fix (move it, another --out, or --force to replace it).
    """
    if not path.is_file():
        return
    import nibabel as nib

    try:
        descrip = bytes(nib.load(path).header["descrip"]).rstrip(b"\0").decode("latin-1", "replace")
    except Exception:  # not even a NIfTI file: certainly not ours
        descrip = "(not a readable NIfTI header)"
    if descrip != LABELS_DESCRIP:
        raise InputError(
            path, f"exists and was not written by segpipe (header description {descrip!r}); segmenting would replace it",
            "move it away or give another --out (--force replaces it)",
        )


def remove_stale_study_temporaries(outputs: StudyOutputs) -> None:
    """Remove the half-written output files a run killed while writing them left (``.tmp-<pid>-S.*``;
    a CT's labels are tens of MB): nothing renames them into place. Under the study's lock."""
    for path in outputs.files():
        for stale in stale_temporaries(path):
            log.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)


def write_outputs(volume: Volume, spec: ModelSpec, labels: np.ndarray, stats: StudyStats, outputs: StudyOutputs, store: Path) -> bool:
    """Replace the study's outputs: old ``S.stats.json`` first (the study no longer looks done), new one last.

    Returns whether a DICOM SEG was written. Any failure removes the study's files, so none is left
    that looks finished.
    """
    try:
        outputs.stats.unlink(missing_ok=True)
        dicom_seg = _write_label_outputs(volume, spec, labels, outputs, source=stats.source)
        if not dicom_seg:
            outputs.seg.unlink(missing_ok=True)
        merge_into_store(stats, store)
        write_stats_json(stats, outputs.stats)  # last: marks the study complete
    except BaseException:
        for path in outputs.files():
            try:
                path.unlink(missing_ok=True)
            except OSError:  # a folder turned read-only: keep the first error
                log.warning("%s: could not remove it after a failed write", path)
        raise
    return dicom_seg


def _write_label_outputs(volume: Volume, spec: ModelSpec, labels: np.ndarray, outputs: StudyOutputs, *, source: str) -> bool:
    """Labels NIfTI, sidecar (naming the absolute ``source``), colour tables and (DICOM input) DICOM SEG. Returns whether a SEG was written."""
    write_labels_nifti(labels, volume.header, outputs.labels)
    write_text_atomic(sidecar_json(spec.classes, source=source, model=spec.name, nodata=spec.nodata), outputs.sidecar)
    write_text_atomic(itksnap_label_table(spec.classes, spec.nodata), outputs.itksnap)
    write_text_atomic(slicer_color_table(spec.classes, spec.nodata), outputs.slicer)
    if volume.dicom is None:
        return False
    write_dicom_seg(labels, volume.dicom, spec.classes, outputs.seg, model_name=spec.name)
    return True


def ensure_row(stats: StudyStats, store: Path) -> None:
    """Put a finished study's statistics back into ``stats.zarr`` if its row is missing."""
    try:
        present = stats.study in set(stored_studies(store))  # the study coordinate only, not the store
    except (FileNotFoundError, OSError, ValueError, KeyError):
        present = False
    if not present:
        merge_into_store(stats, store)
