"""A DICOM series whose first or last slice file was cut short (a transfer stopped early) is refused,
naming the file. It was not: pydicom reads a file cut anywhere before its pixel data without a word,
as a dataset that ends there, so the scan ignored it as a non-image object ("no series or instance
UID", "CT object without pixel data", logged at debug level); the slice gap check cannot see a slice
missing at either end, and the study was segmented one slice short, its labels and volumes (mL)
recorded as complete. Real faults: the slice files cut to their first bytes."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipeline.errors import InputError
from pipeline.volume.readers import read_volume


@pytest.mark.parametrize("which", [0, -1])
@pytest.mark.parametrize("keep", [300, 1000], ids=["cut in the header", "cut before the pixel data"])
def test_an_end_slice_cut_short_fails_the_series(vh, tmp_path, which, keep):
    folder = vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((6, 20, 24)).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    (folder / "README.txt").write_text("exported series\n", encoding="utf-8")  # not DICOM: still ignored
    victim = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")[which]
    victim.write_bytes(victim.read_bytes()[:keep])
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert caught.value.path == str(victim)
    assert caught.value.problem.startswith("damaged DICOM file: a CT Image Storage file ") and caught.value.problem.endswith("it was cut short")
    assert "re-transfer" in caught.value.fix


def test_a_garbled_part10_file_fails_the_series(vh, tmp_path):
    folder = vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((4, 20, 24)).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    victim = sorted(folder.iterdir())[-1]
    victim.write_bytes(victim.read_bytes()[:132] + bytes(range(256)) * 4)  # preamble and DICM, then garbage
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert caught.value.path == str(victim) and caught.value.problem.startswith("damaged DICOM file")


@pytest.mark.parametrize("which", [0, -1])
def test_an_end_slice_cut_at_an_element_boundary_before_its_pixel_data_fails_the_series(vh, tmp_path, which):
    """Cut exactly where the PixelData element starts: every element read ends where the file ends, so
    the file parses as a complete header without pixels. It was ignored as a header-only object, and the
    series ran one slice short (5 of 6) without an error."""
    folder = vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((6, 20, 24)).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    victim = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")[which]
    data = victim.read_bytes()
    pixel_tag = b"\xe0\x7f\x10\x00OW"  # (7FE0,0010) PixelData, explicit VR little endian
    assert data.count(pixel_tag) == 1
    victim.write_bytes(data[: data.index(pixel_tag)])
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert caught.value.path == str(victim)
    assert caught.value.problem == "damaged DICOM file: a CT Image Storage file of this series without pixel data: it was cut short before its pixel data"
    assert "re-transfer" in caught.value.fix


def test_a_header_only_image_object_of_another_series_is_still_ignored(vh, tmp_path):
    folder = vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((4, 20, 24)).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    other = vh.write_dicom_series(tmp_path / "other", vh.ct_crop((1, 20, 24)).astype(np.float64), np.eye(4))
    header = next(other.iterdir())
    data = header.read_bytes()
    (folder / "header-only.dcm").write_bytes(data[: data.index(b"\xe0\x7f\x10\x00OW")])
    assert read_volume(folder).shape == (4, 20, 24)


def test_a_bare_dataset_slice_cut_before_its_pixel_data_fails_the_series(vh, tmp_path):
    """The same cut in a file without the Part 10 preamble (as some PACS exports write): it was skipped as
    "no DICOM preamble and no pixel data: not a DICOM image", and the series ran a slice short."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    folder = vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((6, 20, 24)).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    victim = sorted(folder.iterdir())[-1]
    ds = pydicom.dcmread(victim)
    del ds.file_meta
    del ds.PixelData
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    victim.write_bytes(buffer.getvalue())
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert caught.value.path == str(victim)
    assert caught.value.problem == "damaged DICOM file: a CT Image Storage file of this series without pixel data: it was cut short before its pixel data"
