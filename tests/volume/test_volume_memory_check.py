"""A header declaring far more voxels than this machine can hold is refused from the header alone,
naming the file, before any voxel data is decompressed or allocated (a 9 MB .nii.gz declaring
2048 x 1024 x 1024 voxels decompressed for 32 s, then failed with an unexplained MemoryError;
DICOM slices declaring Rows = Columns = 60000 asked for 40 GiB before the pixel data was read)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.errors import InputError
from pipeline.volume.readers import read_volume

HUGE = (8192, 8192, 8192)  # 2^39 voxels: 8 TiB at 16 bytes each, on any machine


def test_a_nifti_header_declaring_too_many_voxels_is_refused_before_reading(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(HUGE)
    header.set_sform(np.eye(4), code=1)
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as f:  # the header and 4 kB of voxels: a real file would hold 1 TiB of zeros
        f.write(header.binaryblock + b"\0" * (int(header["vox_offset"]) - 348) + b"\0" * 4096)
    with pytest.raises(InputError) as err:
        read_volume(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the NIfTI header declares 8192 x 8192 x 8192 voxels, which need about 8192.0 GiB"), message
    assert "GiB is available" in message and "header that declares far more voxels than the file holds is corrupt" in message


def test_dicom_slices_declaring_enormous_rows_and_columns_are_refused_before_allocating(vh, tmp_path):
    folder = vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((20, 8, 8)).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 65535  # the largest US value; the pixel data stays 8 x 8 (1.2 TiB declared)
        ds.save_as(path)
    with pytest.raises(InputError) as err:
        read_volume(folder)
    message = str(err.value)
    assert message.startswith(f"{folder}: the series (slices x Rows x Columns) declares 20 x 65535 x 65535 voxels, which need about 1280.0 GiB"), message
