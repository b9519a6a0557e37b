"""One run at a time per study and output folder (pipeline.work_lock in pipeline.volume.run): a second
run of a study into the same --out fails at once and leaves the first's work folder and outputs alone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.volume.batch import segment_volumes
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import WORK_DIR, segment_volume
from pipeline.work_lock import work_lock
from tests.raster.test_work_lock import in_background, settled_snapshot, snapshot, wait_for

OPTIONS = VolumeOptions(device="cpu", block=(4, 16, 16))
LOCKED = "another segpipe run is segmenting this study into this folder"


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).T


def test_second_run_fails_at_once_and_the_first_gets_the_solo_labels(vh, tmp_path):
    hu = vh.ct_crop((12, 40, 48))
    study = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    spec = vh.per_voxel_spec(tmp_path)
    out = tmp_path / "out"
    in_engine, go = threading.Event(), threading.Event()

    def blocks(done: int, total: int) -> None:
        if done == 1 and not in_engine.is_set():
            in_engine.set()
            assert go.wait(60)

    thread, results = in_background(lambda: segment_volume(study, spec, out, OPTIONS, model=vh.per_voxel_model(), progress=blocks))
    try:
        assert in_engine.wait(60), results
        assert (out / WORK_DIR / "ct.lock").read_text() == f"{os.getpid()}\n"
        assert wait_for(lambda: any((out / f"{WORK_DIR}/ct/out.zarr/c/").rglob("*")))  # mid-segment: a block written
        before = settled_snapshot(out)
        with pytest.raises(InputError) as caught:
            segment_volume(study, spec, out, OPTIONS, model=vh.per_voxel_model())
        assert str(caught.value) == f"{study}: {LOCKED} (pid {os.getpid()}; --out {out}) (wait for it to finish, or use another --out)"
        forced = VolumeOptions(device="cpu", block=(4, 16, 16), force=True)
        report = segment_volumes([study], spec, out, forced, model=vh.per_voxel_model())  # a batch: a failure of that study
        assert not report.results and [f.message for f in report.failures] == [str(caught.value)]
        after = snapshot(out)  # the first run's engine may add blocks meanwhile
        assert before.items() <= after.items()  # not a file of the first run's removed or changed
    finally:
        go.set()
        thread.join(120)
    first_result = results["first"]
    assert not isinstance(first_result, BaseException), first_result
    solo = segment_volume(study, spec, tmp_path / "solo", OPTIONS, model=vh.per_voxel_model())
    assert np.array_equal(_labels(first_result.outputs.labels), _labels(solo.outputs.labels))
    assert np.array_equal(_labels(first_result.outputs.labels), vh.per_voxel_answer(hu))
    assert first_result.stats.labels == solo.stats.labels
    assert not (out / WORK_DIR).exists()  # lock file and work folder gone, and the folder with them


def test_locked_study_is_skipped_by_nothing_and_other_studies_finish(vh, tmp_path):
    spec = vh.per_voxel_spec(tmp_path)
    a = vh.write_nifti(tmp_path / "a.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("RAS"))
    b = vh.write_nifti(tmp_path / "b.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    out = tmp_path / "out"
    with work_lock(out / WORK_DIR, "a", subject=a, out_dir=out, what="study"):
        report = segment_volumes([a, b], spec, out, OPTIONS, model=vh.per_voxel_model())
        assert sorted(p.name for p in (out / WORK_DIR).iterdir()) == ["a.lock"]
    assert [r.study for r in report.results] == ["b"]
    assert [f.source for f in report.failures] == [str(a)] and LOCKED in report.failures[0].message
    assert not (out / "a.labels.nii.gz").exists() and (out / "b.labels.nii.gz").is_file()
    again = segment_volumes([a, b], spec, out, OPTIONS, model=vh.per_voxel_model())
    assert again.ok and [r.skipped for r in again.results] == [False, True]
    assert not (out / WORK_DIR).exists()
