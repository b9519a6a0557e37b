"""A DICOM series whose first or last slice file was cut short (a transfer stopped early) is refused,
naming the file. It was not: pydicom reads a file cut anywhere before its pixel data without a word,
as a dataset that ends there, so the scan ignored it as a non-image object ("no series or instance
UID", "CT object without pixel data", logged at debug level); the slice gap check cannot see a slice
missing at either end, and the study was segmented one slice short, its labels and volumes (mL)
recorded as complete. Real faults: the slice files cut to their first bytes."""

from __future__ import annotations

import numpy as np
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
