"""An output folder that is read-only, fills up or loses its permissions: one clear error naming the
folder and the fix, never "unexpected ... please report it", and no work folder left behind."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.volume import publish
from pipeline.volume.batch import segment_volumes
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import WORK_DIR, segment_volume

CPU = VolumeOptions(device="cpu")


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_fails_the_study_clearly(vh, tmp_path, pv_model, monkeypatch):
    hu = vh.ct_crop((6, 20, 24))
    study = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    monkeypatch.setattr(publish, "write_labels_nifti", _disk_full)
    message = f"{out}: no space left on device writing the outputs of ct (free space or choose another --out)"
    with pytest.raises(InputError) as caught:
        segment_volume(study, spec, out, CPU, model=pv_model)
    assert str(caught.value) == message
    assert sorted(p.name for p in out.iterdir()) == []  # no work folder, no study file

    report = segment_volumes([study], spec, out, CPU, model=pv_model)
    assert [f.message for f in report.failures] == [message]
    monkeypatch.undo()  # space freed: the next run segments it
    assert segment_volume(study, spec, out, CPU, model=pv_model).redone == ""
    assert not (out / WORK_DIR).exists()


def test_an_error_of_another_kind_keeps_its_traceback_message(vh, tmp_path, pv_model, monkeypatch):
    study = vh.write_nifti(tmp_path / "ct.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(publish, "write_labels_nifti", io_error)
    report = segment_volumes([study], vh.per_voxel_spec(tmp_path), tmp_path / "out", CPU, model=pv_model)
    assert "unexpected OSError: [Errno 5] Input/output error" in report.failures[0].message


def test_a_really_full_disk_fails_the_study_and_frees_the_work_folder(vh, tmp_path, pv_model, capsys, monkeypatch, tmpfs):
    monkeypatch.setenv("COLUMNS", "400")
    rng = np.random.default_rng(0)
    noise = rng.integers(-1000, 1000, size=(32, 64, 64)).astype(np.int16)  # incompressible: ~1 MB of float32 in the work store
    study = vh.write_nifti(tmp_path / "big.nii.gz", noise, vh.axis_affine("RAS"))
    with tmpfs(tmp_path / "small", "size=256k") as small:
        out = small / "out"
        report = segment_volumes([study], vh.per_voxel_spec(tmp_path), out, VolumeOptions(device="cpu", block=(16, 32, 32)), model=pv_model)
        assert [f.message for f in report.failures] == [
            f"{out}: no space left on device writing the outputs of big (free space or choose another --out)"
        ]
        assert not (out / WORK_DIR).exists() and not list(out.glob("big.*"))


def test_a_read_only_out_is_refused_before_any_work(vh, tmp_path, capsys, tmpfs):
    study = vh.write_nifti(tmp_path / "ct.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code = main(["volume", str(study), str(study.with_name("other.nii.gz")), "--model", "demo-ct", "--out", str(ro), "--device", "cpu"])
        captured = capsys.readouterr()
        assert code == 2
        assert captured.err.count(f"{ro}: not writable: read-only file system (choose another --out)") == 1
        assert "unexpected" not in captured.out + captured.err
