"""A study's work folder damaged between a killed run and its resume (an engine output chunk lost
or truncated, the finished-block record truncated) is never read back as labels: the damaged blocks
are segmented again and the outputs equal an uninterrupted run's. Before: a lost chunk of a
finished block came back as label 0, looking complete; a truncated one failed every later run
with a raw codec error."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import WORK_DIR, segment_volume
from pipeline.volume.stats_zarr import open_stats

OPTIONS = VolumeOptions(device="cpu", block=(6, 16, 16))  # a 2 x 3 x 3 block grid on the 12 x 40 x 48 crop


class _Killed(Exception):
    pass


def _stop_when_finished(done: int, total: int) -> None:
    if done == total:  # every block written and marked: as if killed before the outputs
        raise _Killed


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "output chunk missing": lambda w: (w / "out.zarr" / "c" / "1" / "1" / "1").unlink(),
    "output chunk truncated": lambda w: _truncate(w / "out.zarr" / "c" / "1" / "1" / "1"),
    "done chunk truncated": lambda w: _truncate(w / "done.zarr" / "c" / "1" / "1" / "1"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_work_folder_is_redone_not_read_back(vh, tmp_path, pv_model, damage):
    spec = vh.per_voxel_spec(tmp_path)
    study = vh.write_nifti(tmp_path / "case.nii.gz", vh.ct_crop(), vh.axis_affine("RAS"))
    reference = segment_volume(study, spec, tmp_path / "ref", OPTIONS, model=pv_model)
    out = tmp_path / "out"
    with pytest.raises(_Killed):
        segment_volume(study, spec, out, OPTIONS, model=pv_model, progress=_stop_when_finished)
    work = out / WORK_DIR / "case"
    DAMAGE[damage](work)

    result = segment_volume(study, spec, out, OPTIONS, model=pv_model)

    assert 0 < result.blocks_run < 18  # the damaged block and what it needs, not the whole study
    expected = np.asarray(nib.load(reference.outputs.labels).dataobj)
    assert np.array_equal(np.asarray(nib.load(result.outputs.labels).dataobj), expected)
    got, want = open_stats(out / "stats.zarr"), open_stats(tmp_path / "ref" / "stats.zarr")
    assert np.array_equal(got["voxel_count"].values, want["voxel_count"].values)
    assert not work.exists()


def test_a_work_folder_left_after_the_study_was_done_is_removed_by_the_next_run(vh, tmp_path, pv_model, monkeypatch):
    """Killed after ``S.stats.json`` (the study is done) but before its work folder was removed: the
    next run skips the study and removes the folder. Before: skipped, the folder stayed for good (a
    CT's engine arrays: hundreds of MB, GB of logits for a resampling model)."""
    import pipeline.volume.run as run

    spec = vh.per_voxel_spec(tmp_path)
    study = vh.write_nifti(tmp_path / "case.nii.gz", vh.ct_crop(), vh.axis_affine("RAS"))
    out = tmp_path / "out"

    def killed(outputs):
        raise _Killed

    monkeypatch.setattr(run, "_remove_work", killed)
    with pytest.raises(_Killed):
        segment_volume(study, spec, out, OPTIONS, model=pv_model)
    monkeypatch.undo()
    assert (out / "case.stats.json").is_file() and (out / WORK_DIR / "case" / "done.zarr").is_dir()

    again = segment_volume(study, spec, out, OPTIONS, model=pv_model)

    assert again.skipped
    assert not (out / WORK_DIR).exists()
