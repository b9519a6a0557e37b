"""A NIfTI ``.hdr``/``.img`` pair is read (by either file): labels ``NAME.labels.nii.gz`` on its grid and
affine; broken or Analyze pairs and renamed pair headers are refused with a fix that works."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.readers import read_volume, study_stem
from pipeline.volume.run import segment_volume

CPU = VolumeOptions(device="cpu")


def _pair(vh, folder, name="pair"):
    """``name.hdr`` + ``name.img`` holding a CT crop ``(Z, Y, X)`` on an oblique grid with sform and qform."""
    hu = vh.ct_crop((6, 20, 24))
    affine = vh.oblique_affine()
    img = nib.Nifti1Pair(hu.T, None)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    folder.mkdir(exist_ok=True)
    nib.save(img, folder / f"{name}.hdr")
    assert (folder / f"{name}.img").is_file() and (folder / f"{name}.hdr").read_bytes()[344:348] == b"ni1\0"
    return folder / f"{name}.hdr", hu, affine


def test_a_pair_is_read_by_either_file_and_labelled_on_its_grid(vh, tmp_path, pv_model):
    header, hu, affine = _pair(vh, tmp_path / "in")
    volume = read_volume(header)
    assert np.array_equal(volume.data, hu.astype(np.float32)) and np.allclose(volume.affine, affine)
    assert np.array_equal(read_volume(header.with_suffix(".img")).data, volume.data)
    assert study_stem(header) == study_stem(header.with_suffix(".img")) == "pair"

    out = tmp_path / "out"
    result = segment_volume(header, vh.per_voxel_spec(tmp_path), out, CPU, model=pv_model)
    assert result.outputs.labels == out / "pair.labels.nii.gz"
    labels = nib.load(result.outputs.labels)
    assert labels.shape == (24, 20, 6) and np.array_equal(np.asarray(labels.dataobj).T, vh.per_voxel_answer(hu))
    assert np.allclose(labels.affine, affine)
    assert [int(c) for c in (labels.header["sform_code"], labels.header["qform_code"])] == [1, 1]
    record = json.loads(result.outputs.stats.read_text())["made_with"]["input"]
    assert record["source"] == str(header.resolve()) and record["fingerprint"].startswith("hdr 348 bytes") and "; img " in record["fingerprint"]
    # the same pair given by its .img is the same input: skipped
    assert segment_volume(header.with_suffix(".img"), vh.per_voxel_spec(tmp_path), out, CPU, model=pv_model).skipped
    # a rewritten .img (the voxels) is a new version of the input: redone
    image = header.with_suffix(".img")
    stamp = image.stat().st_mtime_ns + 10**9
    os.utime(image, ns=(stamp, stamp))
    again = segment_volume(header, vh.per_voxel_spec(tmp_path), out, CPU, model=pv_model)
    assert not again.skipped and again.redone == "made from an earlier version of the input, which changed since the last run"


def test_a_renamed_pair_header_is_told_to_go_back_to_hdr(vh, tmp_path):
    header, _, _ = _pair(vh, tmp_path)
    renamed = tmp_path / "pair.hdr.nii"
    shutil.copy(header, renamed)
    with pytest.raises(InputError) as caught:
        read_volume(renamed)
    assert str(caught.value) == (
        f"{renamed}: the header of a NIfTI .hdr/.img pair, not a single-file NIfTI: the voxels are in a separate .img file "
        "(rename it to pair.hdr, keep its voxel file pair.img next to it, and give pair.hdr)"
    )
    shutil.copy(header, tmp_path / "pairheader")
    with pytest.raises(InputError, match=r"pairheader: the header of a NIfTI .hdr/.img pair.*\(rename it to pairheader.hdr, keep"):
        read_volume(tmp_path / "pairheader")


def test_broken_and_analyze_pairs_are_refused(vh, tmp_path):
    header, _, _ = _pair(vh, tmp_path / "a")
    header.with_suffix(".img").unlink()
    with pytest.raises(InputError, match=r"pair.hdr: NIfTI pair header without its image file pair.img \(put pair.img"):
        read_volume(header)
    header, _, _ = _pair(vh, tmp_path / "b")
    header.unlink()
    with pytest.raises(InputError, match=r"pair.img: image file of a NIfTI pair without its header pair.hdr \(put pair.hdr next to it"):
        read_volume(header.with_suffix(".img"))
    nib.save(nib.AnalyzeImage(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "old.hdr")
    with pytest.raises(InputError, match=r"old.hdr: an Analyze 7.5 header \(no NIfTI magic\): its left-right orientation is not defined"):
        read_volume(tmp_path / "old.img")
    with pytest.raises(InputError, match="--series-uid 1.2.3 given but this is a NIfTI file"):
        segment_volume(tmp_path / "b" / "pair.img", vh.per_voxel_spec(tmp_path), tmp_path / "out", VolumeOptions(device="cpu", series_uid="1.2.3"))


def test_both_files_of_a_pair_in_one_batch_are_one_study(vh, tmp_path, pv_model):
    """``segpipe volume data/*`` gives both ``pair.hdr`` and ``pair.img``: the second was a failure
    telling the user to rename one of them; it is the same study, segmented once."""
    from pipeline.volume.batch import segment_volumes

    header, hu, _ = _pair(vh, tmp_path / "in")
    other, _, _ = _pair(vh, tmp_path / "elsewhere")  # another pair of the same name is still a clash
    report = segment_volumes([header, header.with_suffix(".img"), other], vh.per_voxel_spec(tmp_path), tmp_path / "out", CPU, model=pv_model)
    assert [r.study for r in report.results] == ["pair"]
    assert [f.source for f in report.failures] == [str(other)] and "same output name 'pair'" in report.failures[0].message
