"""A finished study is skipped only when the same model spec made it; otherwise it is segmented again."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from pipeline.errors import InputError
from pipeline.volume.batch import segment_volumes
from pipeline.volume.made_with import input_record, made_with, why_redo
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import segment_volume, study_done

CPU = VolumeOptions(device="cpu")


def _labels(path):
    return np.asarray(nib.load(path).dataobj).T


def test_another_model_replaces_the_outputs_and_says_why(vh, tmp_path):
    hu = vh.ct_crop((6, 20, 24))
    study = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    out = tmp_path / "out"
    three = vh.per_voxel_spec(tmp_path, n_classes=3)
    two = vh.per_voxel_spec(tmp_path, n_classes=2)
    first = segment_volume(study, three, out, CPU, model=vh.per_voxel_model())
    assert not first.skipped and first.redone == ""
    assert study_done(study, three, out) and not study_done(study, two, out)

    second = segment_volume(study, two, out, CPU, model=vh.per_voxel_model(vh.BODY_WEIGHT, vh.BODY_BIAS))
    assert not second.skipped
    assert second.redone == "made by model 'per-voxel-3', not 'per-voxel-2'"
    assert np.array_equal(_labels(second.outputs.labels), vh.per_voxel_answer(hu, vh.BODY_WEIGHT, vh.BODY_BIAS))
    raw = json.loads(second.outputs.stats.read_text())
    assert raw["model"] == "per-voxel-2" and raw["made_with"] == made_with(two, source=input_record(study))
    assert [c["name"] for c in json.loads(second.outputs.sidecar.read_text())["labels"].values()] == ["air", "body"]
    ds = xr.open_zarr(out / "stats.zarr")
    assert ds.model.values.tolist() == ["per-voxel-2"]

    again = segment_volume(study, two, out, CPU, model=vh.per_voxel_model(vh.BODY_WEIGHT, vh.BODY_BIAS))
    assert again.skipped and again.redone == ""


def test_same_name_other_settings_or_weights_redo_identical_weights_skip(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    study = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    segment_volume(study, spec, out, CPU, model=pv_model)
    # the same weights written again (new mtime, same bytes): still done
    vh.per_voxel_spec(tmp_path)
    assert segment_volume(study, spec, out, CPU, model=pv_model).skipped
    # other overlap
    wider = dataclasses.replace(spec, overlap=0.5)
    result = segment_volume(study, wider, out, CPU, model=pv_model)
    assert not result.skipped and result.redone == "made by model 'per-voxel-3' with a different overlap"
    # other weights under the same name and path
    from safetensors.torch import save_file

    other = vh.per_voxel_model((0.0, 10.0, 0.0), (0.0, -4.5031, 0.0))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wider.checkpoint))
    result = segment_volume(study, wider, out, CPU, model=other)
    assert result.redone == "made by model 'per-voxel-3' with a different checkpoint_sha256"
    assert np.array_equal(_labels(result.outputs.labels), vh.per_voxel_answer(hu, (0.0, 10.0, 0.0), (0.0, -4.5031, 0.0)))


def test_outputs_without_a_record_are_redone(vh, tmp_path, pv_model):
    """Outputs of an older segpipe (stats.json without ``made_with``) cannot be trusted to match."""
    study = vh.write_nifti(tmp_path / "ct.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    first = segment_volume(study, spec, out, CPU, model=pv_model)
    raw = json.loads(first.outputs.stats.read_text())
    del raw["made_with"]
    first.outputs.stats.write_text(json.dumps(raw))
    result = segment_volume(study, spec, out, CPU, model=pv_model)
    assert result.redone.startswith("made by model 'per-voxel-3' by an older segpipe")
    assert json.loads(result.outputs.stats.read_text())["made_with"] == made_with(spec, source=input_record(study))


def test_batch_redoes_only_studies_of_another_model(vh, tmp_path):
    a = vh.write_nifti(tmp_path / "a.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    b = vh.write_nifti(tmp_path / "b.nii.gz", vh.ct_crop((6, 20, 24)) + 1, vh.axis_affine("RAS"))
    out = tmp_path / "out"
    three, two = vh.per_voxel_spec(tmp_path, n_classes=3), vh.per_voxel_spec(tmp_path, n_classes=2)
    segment_volume(a, three, out, CPU, model=vh.per_voxel_model())
    segment_volume(b, two, out, CPU, model=vh.per_voxel_model(vh.BODY_WEIGHT, vh.BODY_BIAS))
    report = segment_volumes([a, b], two, out, CPU)  # loads the spec's checkpoint: a needs it
    assert report.ok
    assert [(r.study, r.skipped, r.redone) for r in report.results] == [
        ("a", False, "made by model 'per-voxel-3', not 'per-voxel-2'"),
        ("b", True, ""),
    ]
    assert xr.open_zarr(out / "stats.zarr").model.values.tolist() == ["per-voxel-2", "per-voxel-2"]


def test_why_redo_names_what_changed():
    new = {"model": "m", "overlap": 0.5, "window": [8, 8, 8]}
    assert why_redo(dict(new), new) is None
    assert why_redo({**new, "overlap": 0.25, "window": [4, 4, 4]}, new) == "made by model 'm' with a different overlap, window"
    assert why_redo({**new, "model": "x"}, new) == "made by model 'x', not 'm'"
    assert why_redo({}, new, old_model="x") == "made by model 'x', not 'm'"


# What was segmented: the input's absolute path, DICOM series, 4D volume and file fingerprint.


def _set_mtime(path, ns):
    import os

    os.utime(path, ns=(ns, ns))


def test_the_series_read_is_recorded_and_another_series_is_not_done(vh, tmp_path, pv_model):
    """Another series of the same folder is another input (refused by segment_volume, see
    test_volume_same_stem_inputs.py); study_done says it is not done."""
    hu = vh.ct_crop((6, 20, 24))
    other = (hu + 400).astype(np.int16)
    folder = tmp_path / "series"
    vh.write_dicom_series(folder / "a", hu, vh.axis_affine("LPS"), series_uid="1.2.826.0.1.1")
    vh.write_dicom_series(folder / "b", other, vh.axis_affine("LPS"), series_uid="1.2.826.0.1.2")
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    a = VolumeOptions(device="cpu", series_uid="1.2.826.0.1.1")
    first = segment_volume(folder, spec, out, a, model=pv_model)
    assert np.array_equal(_labels(first.outputs.labels), vh.per_voxel_answer(hu))
    assert study_done(folder, spec, out, series_uid="1.2.826.0.1.1")
    assert not study_done(folder, spec, out, series_uid="1.2.826.0.1.2")
    recorded = json.loads(first.outputs.stats.read_text())["made_with"]["input"]
    assert recorded["source"] == str(folder.resolve()) and recorded["series_uid"] == "1.2.826.0.1.1"
    assert recorded["volume_index"] == -1 and recorded["fingerprint"].startswith("12 files, sha256 ")
    assert segment_volume(folder, spec, out, a, model=pv_model).skipped


def test_a_single_series_folder_is_skipped_without_series_uid_and_redone_when_a_file_changes(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    folder = vh.write_dicom_series(tmp_path / "ct", hu, vh.axis_affine("LPS"), series_uid="1.2.826.0.1.9")
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    first = segment_volume(folder, spec, out, CPU, model=pv_model)
    assert json.loads(first.outputs.stats.read_text())["made_with"]["input"]["series_uid"] == "1.2.826.0.1.9"
    assert segment_volume(folder, spec, out, CPU, model=pv_model).skipped
    # the same bytes copied again over one slice (a re-transfer): new mtime, so it is segmented again
    slice_ = sorted(folder.iterdir())[2]
    _set_mtime(slice_, slice_.stat().st_mtime_ns + 1_000_000_000)
    again = segment_volume(folder, spec, out, CPU, model=pv_model)
    assert not again.skipped and again.redone == "made from an earlier version of the input, which changed since the last run"
    assert segment_volume(folder, spec, out, CPU, model=pv_model).skipped


def test_a_replaced_input_file_is_segmented_again_even_when_broken(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    study = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    segment_volume(study, spec, out, CPU, model=pv_model)
    newer = (hu + 400).astype(np.int16)
    stamp = study.stat().st_mtime_ns
    vh.write_nifti(study, newer, vh.axis_affine("LPS"))  # a new export under the same name
    _set_mtime(study, stamp + 1_000_000_000)
    assert not study_done(study, spec, out)
    result = segment_volume(study, spec, out, CPU, model=pv_model)
    assert result.redone == "made from an earlier version of the input, which changed since the last run"
    assert np.array_equal(_labels(result.outputs.labels), vh.per_voxel_answer(newer))
    # replaced by a broken export: the study fails, it is not "skipped (done)"
    study.write_bytes(b"\x1f\x8b truncated")
    report = segment_volumes([study], spec, out, CPU, model=pv_model)
    assert report.results == () and "cannot open as NIfTI" in report.failures[0].message


def test_another_input_of_the_same_name_is_refused_and_force_replaces_it(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    other = (hu + 400).astype(np.int16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = vh.write_nifti(tmp_path / "a" / "case01.nii.gz", hu, vh.axis_affine("LPS"))
    b = vh.write_nifti(tmp_path / "b" / "case01.nii.gz", other, vh.axis_affine("LPS"))
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    first = segment_volume(a, spec, out, CPU, model=pv_model)
    stamp = first.outputs.labels.stat().st_mtime_ns
    message = (
        f"{out}/case01.*: was made from {a.resolve()}, not {b.resolve()} "
        "(use another --out, rename the input, or --force to replace it)"
    )
    with pytest.raises(InputError) as caught:
        segment_volume(b, spec, out, CPU, model=pv_model)
    assert str(caught.value) == message
    assert not study_done(b, spec, out) and study_done(a, spec, out)
    report = segment_volumes([b], spec, out, CPU, model=pv_model)
    assert not report.ok and [f.message for f in report.failures] == [message]
    assert first.outputs.labels.stat().st_mtime_ns == stamp  # a's outputs untouched
    forced = segment_volume(b, spec, out, VolumeOptions(device="cpu", force=True), model=pv_model)
    assert np.array_equal(_labels(forced.outputs.labels), vh.per_voxel_answer(other))
    assert json.loads(forced.outputs.stats.read_text())["source"] == str(b.resolve())
    assert xr.open_zarr(out / "stats.zarr").source.values.tolist() == [str(b.resolve())]
    assert segment_volume(b, spec, out, CPU, model=pv_model).skipped


def test_outputs_without_an_input_record_are_redone_once(vh, tmp_path, pv_model):
    """Outputs made before the input was recorded cannot tell what they were made from."""
    study = vh.write_nifti(tmp_path / "ct.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    first = segment_volume(study, spec, out, CPU, model=pv_model)
    raw = json.loads(first.outputs.stats.read_text())
    del raw["made_with"]["input"]
    raw["made_with"]["volume_index"] = -1  # where the older record kept it
    first.outputs.stats.write_text(json.dumps(raw))
    assert not study_done(study, spec, out)
    result = segment_volume(study, spec, out, CPU, model=pv_model)
    assert result.redone == "made by model 'per-voxel-3' by an older segpipe that did not record which input it segmented"
    assert segment_volume(study, spec, out, CPU, model=pv_model).skipped


def test_why_input_changed_names_what_changed():
    from pipeline.volume.made_with import InputRecord, why_input_changed

    old = InputRecord("/d/ct", "1.2.3", -1, "3 files, sha256 ab")
    assert why_input_changed(old, old) is None
    assert why_input_changed(old, InputRecord("/d/ct", "", -1, "3 files, sha256 ab")) is None  # no series asked for
    assert why_input_changed(old, InputRecord("/d/ct", "1.2.4", -1, "3 files, sha256 ab")) == "made from series 1.2.3, not 1.2.4"
    assert why_input_changed(old, InputRecord("/d/ct", "", 0, "3 files, sha256 ab")) == "made from the 3D image, not volume 0"
    assert why_input_changed(old, InputRecord("/d/ct", "", -1, "4 files, sha256 cd")) == (
        "made from an earlier version of the input, which changed since the last run"
    )
    assert why_input_changed(old, InputRecord("/e/ct", "", -1, "3 files, sha256 ab")) == "made from /d/ct, not /e/ct"
