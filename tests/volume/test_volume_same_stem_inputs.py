"""Another DICOM series of the same folder, or another volume of the same 4D NIfTI file, into the same
``--out`` is another input with the same output stem: refused before any work, unless forced.

A new version of the *same* series or volume (the folder or file rewritten) is still redone.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import segment_volume, study_done

U1, U2 = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2"


def _labels(path):
    return np.asarray(nib.load(path).dataobj).T


def _ml(out):
    ds = xr.open_zarr(out / "stats.zarr")
    return ds.study.values.tolist(), ds.source.values.tolist(), ds.volume_ml.values.copy()


def _stamps(outputs):
    return {p.name: p.stat().st_mtime_ns for p in outputs.files() if p.exists()}


def test_another_series_of_the_folder_is_refused_and_force_replaces_it(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    other = (hu + 400).astype(np.int16)
    folder = tmp_path / "two_series"
    vh.write_dicom_series(folder / "a", hu, vh.axis_affine("LPS"), series_uid=U1)
    vh.write_dicom_series(folder / "b", other, vh.axis_affine("LPS"), series_uid=U2)
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    first = segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U1), model=pv_model)
    before, stamps = _ml(out), _stamps(first.outputs)

    calls = []

    def no_model(x):  # refused before any work: the model never runs
        calls.append(x.shape)
        return pv_model(x)

    with pytest.raises(InputError) as caught:
        segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U2), model=no_model)
    assert str(caught.value) == (
        f"{out}/two_series.*: was made from series {U1} of {folder.resolve()}, not from series {U2} "
        "(use another --out for each, or --force to replace it)"
    )
    assert calls == [] and _stamps(first.outputs) == stamps
    studies, sources, ml = _ml(out)
    assert (studies, sources) == before[:2] and np.array_equal(ml, before[2], equal_nan=True)
    assert json.loads(first.outputs.stats.read_text())["made_with"]["input"]["series_uid"] == U1
    assert study_done(folder, spec, out, series_uid=U1) and not study_done(folder, spec, out, series_uid=U2)
    # the same series again is still the finished study
    assert segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U1), model=pv_model).skipped

    forced = segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U2, force=True), model=pv_model)
    assert np.array_equal(_labels(forced.outputs.labels), vh.per_voxel_answer(other))
    assert json.loads(forced.outputs.stats.read_text())["made_with"]["input"]["series_uid"] == U2
    assert segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U2), model=pv_model).skipped


def test_a_rewritten_folder_of_the_same_series_is_still_redone(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    folder = tmp_path / "two_series"
    vh.write_dicom_series(folder / "a", hu, vh.axis_affine("LPS"), series_uid=U1)
    vh.write_dicom_series(folder / "b", hu[:4], vh.axis_affine("LPS"), series_uid=U2)
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    options = VolumeOptions(device="cpu", series_uid=U1)
    segment_volume(folder, spec, out, options, model=pv_model)
    slice_ = sorted((folder / "a").iterdir())[1]
    stamp = slice_.stat().st_mtime_ns + 10**9
    os.utime(slice_, ns=(stamp, stamp))
    again = segment_volume(folder, spec, out, options, model=pv_model)
    assert not again.skipped and again.redone == "made from an earlier version of the input, which changed since the last run"


def test_a_series_added_to_a_single_series_folder_is_another_input(vh, tmp_path, pv_model):
    """The first run read the folder's only series (no --series-uid); a series added since is another input."""
    hu = vh.ct_crop((6, 20, 24))
    folder = tmp_path / "ct"
    vh.write_dicom_series(folder / "a", hu, vh.axis_affine("LPS"), series_uid=U1)
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    segment_volume(folder, spec, out, VolumeOptions(device="cpu"), model=pv_model)
    vh.write_dicom_series(folder / "b", hu[:4], vh.axis_affine("LPS"), series_uid=U2)
    with pytest.raises(InputError, match=f"was made from series {U1} of .*, not from series {U2}"):
        segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U2), model=pv_model)
    # its own series, asked for by UID now that the folder holds two: the folder changed, so redone
    again = segment_volume(folder, spec, out, VolumeOptions(device="cpu", series_uid=U1), model=pv_model)
    assert not again.skipped and again.redone.startswith("made from an earlier version")


def test_another_volume_of_a_4d_file_is_refused_and_force_replaces_it(vh, tmp_path, pv_model):
    volumes = [vh.ct_crop((6, 20, 24)).astype(np.int16) + 200 * k for k in range(3)]
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([v.T for v in volumes], axis=-1), vh.axis_affine("RAS")), path)
    out = tmp_path / "out"
    spec = vh.per_voxel_spec(tmp_path)
    first = segment_volume(path, spec, out, VolumeOptions(device="cpu", volume_index=1), model=pv_model)
    stamps = _stamps(first.outputs)
    with pytest.raises(InputError) as caught:
        segment_volume(path, spec, out, VolumeOptions(device="cpu", volume_index=2), model=pv_model)
    assert str(caught.value) == (
        f"{out}/four_d.*: was made from volume 1 of {path.resolve()}, not from volume 2 "
        "(use another --out for each, or --force to replace it)"
    )
    assert _stamps(first.outputs) == stamps and np.array_equal(_labels(first.outputs.labels), vh.per_voxel_answer(volumes[1]))
    assert not study_done(path, spec, out, volume_index=2) and study_done(path, spec, out, volume_index=1)

    forced = segment_volume(path, spec, out, VolumeOptions(device="cpu", volume_index=2, force=True), model=pv_model)
    assert np.array_equal(_labels(forced.outputs.labels), vh.per_voxel_answer(volumes[2]))
    assert xr.open_zarr(out / "stats.zarr").study.values.tolist() == ["four_d"]
    # the same volume of a rewritten file is a new version of it: redone
    stamp = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))
    again = segment_volume(path, spec, out, VolumeOptions(device="cpu", volume_index=2), model=pv_model)
    assert not again.skipped and again.redone == "made from an earlier version of the input, which changed since the last run"
