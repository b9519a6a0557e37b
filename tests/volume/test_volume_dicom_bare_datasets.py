"""DICOM files without the 128-byte preamble and ``DICM`` prefix (bare datasets, as some PACS exports
write) are read when they hold an image; other files that only parse with ``force=True`` stay skipped."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.readers import read_volume
from pipeline.volume.run import segment_volume


def _series(vh, tmp_path, name="ct", shape=(6, 20, 24)):
    hu = vh.ct_crop(shape).astype(np.float64)
    return vh.write_dicom_series(tmp_path / name, hu, vh.axis_affine("LPS", (0.7, 0.8, 2.5))), hu


def _bare(path, *, implicit=True):
    """Rewrite a Part 10 file as its bare dataset: no preamble, no DICM, no file meta."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())
    assert path.read_bytes()[:2] == b"\x08\x00"
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)


def test_a_series_of_bare_datasets_reads_like_the_part10_files(vh, tmp_path, pv_model):
    folder, hu = _series(vh, tmp_path)
    reference = read_volume(folder)
    for i, path in enumerate(sorted(folder.iterdir())):
        _bare(path, implicit=i % 2 == 0)  # implicit and explicit VR little endian, as exports write them
    volume = read_volume(folder)
    assert np.array_equal(volume.data, hu.astype(np.float32)) and np.array_equal(volume.affine, reference.affine)
    assert volume.dicom.sop_instance_uids == reference.dicom.sop_instance_uids
    result = segment_volume(folder, vh.per_voxel_spec(tmp_path), tmp_path / "out", VolumeOptions(device="cpu"), model=pv_model)
    seg = pydicom.dcmread(result.outputs.seg)
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert seg.Modality == "SEG" and referenced == set(reference.dicom.sop_instance_uids)


def test_some_bare_files_among_part10_files_are_not_missing_slices(vh, tmp_path):
    folder, hu = _series(vh, tmp_path)
    for path in sorted(folder.iterdir())[2:4]:
        _bare(path)
    assert np.array_equal(read_volume(folder).data, hu.astype(np.float32))


def test_files_that_only_parse_when_forced_are_not_slices(vh, tmp_path):
    folder, hu = _series(vh, tmp_path)
    junk = folder / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello " * 200)
    (junk / "group8.bin").write_bytes(b"\x08\x00\x16\x00" + np.random.default_rng(0).bytes(4000))  # starts like a dataset
    header_only = junk / "header.dcm"  # a bare CT header without pixel data
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    ds.save_as(header_only, enforce_file_format=True)
    _bare(header_only)
    volume = read_volume(folder)
    assert volume.shape == hu.shape and all(f.parent == folder for f in volume.dicom.files)
    with pytest.raises(InputError, match="no DICOM image files found") as caught:
        read_volume(junk)
    assert str(junk) in str(caught.value)
