"""A finished study is skipped only when the same model spec made it; otherwise it is segmented again."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import xarray as xr

from pipeline.volume.made_with import made_with, why_redo
from pipeline.volume.batch import segment_volumes
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
    assert raw["model"] == "per-voxel-2" and raw["made_with"] == made_with(two)
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
    assert json.loads(result.outputs.stats.read_text())["made_with"] == made_with(spec)


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
