"""An output that the file system (FAT32's 4 GB) or ``ulimit -f`` refuses to grow is reported as the
output folder's problem, with the fix, and the failed run leaves nothing that looks complete; the
next run with room works. Before: "unexpected OSError: [Errno 27] File too large", naming the input."""

from __future__ import annotations

import pytest

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import segment_volume


def test_volume_output_past_the_file_size_limit_names_the_folder_and_the_fix(vh, tmp_path, pv_model, file_size_limit):
    spec = vh.per_voxel_spec(tmp_path)
    study = vh.write_nifti(tmp_path / "case.nii.gz", vh.ct_crop(), vh.axis_affine("RAS"))
    out = tmp_path / "out"
    out.mkdir()
    with file_size_limit(3_000), pytest.raises(InputError) as caught:  # the labels NIfTI does not fit
        segment_volume(study, spec, out, VolumeOptions(device="cpu"), model=pv_model)
    assert caught.value.path == str(out)
    assert caught.value.problem.startswith("file too large")
    assert not (out / "case.labels.nii.gz").exists() and not (out / "case.stats.json").exists()

    result = segment_volume(study, spec, out, VolumeOptions(device="cpu"), model=pv_model)
    assert result.outputs.labels.is_file()
