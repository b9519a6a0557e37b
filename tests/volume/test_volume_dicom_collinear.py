"""A slice whose ImagePositionPatient lies off the series line is refused (the affine, from the first and
last positions, would misplace it); gantry tilt and the rounding of DICOM decimal strings are accepted.
Also: a 2D input is told segpipe segments 3D only."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipeline.errors import InputError
from pipeline.volume.readers import read_volume

SPACING = (0.7, 0.8, 2.5)  # x (columns), y (rows), z mm: tolerance max(0.02, 0.1 * 0.7) = 0.07 mm


def _series(vh, tmp_path, affine=None, n=8):
    affine = vh.axis_affine("LPS", SPACING) if affine is None else affine
    return vh.write_dicom_series(tmp_path / "ct", vh.ct_crop((n, 20, 24)).astype(np.float64), affine)


def _move(path, shift_lps=(0.0, 0.0, 0.0), decimals=None):
    """Shift a slice's ImagePositionPatient (LPS mm) and/or round it to ``decimals``, as writers do."""
    ds = pydicom.dcmread(path)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + shift_lps
    ds.ImagePositionPatient = [f"{v:.{decimals}f}" if decimals is not None else f"{v:.10g}" for v in ipp]
    ds.save_as(path)


def _tilted(vh, degrees=15.0):
    """A gantry-tilted grid: each slice steps 2.5 mm along z and 2.5 tan(t) mm along y (a shear)."""
    affine = vh.axis_affine("LPS", SPACING)
    affine[1, 2] = -SPACING[2] * np.tan(np.deg2rad(degrees))  # RAS y of the slice step (LPS +y)
    return affine


def test_a_slice_shifted_in_plane_is_refused_naming_it(vh, tmp_path):
    folder = _series(vh, tmp_path)
    _move(folder / "IM0004.dcm", (5.0, 0.0, 0.0))
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert str(caught.value) == (
        f"{folder}: slice positions not collinear: 1 of 8 slices lies off the line through the others' ImagePositionPatient, "
        "in-plane: IM0004.dcm (slice 4) by 5.00 mm (tolerance 0.07 mm) "
        "(remove the stray slice(s) from the folder or re-export the series; a localizer or another acquisition may be mixed in)"
    )


def test_a_shifted_first_or_last_slice_is_the_one_named(vh, tmp_path):
    folder = _series(vh, tmp_path)
    _move(folder / "IM0000.dcm", (0.0, -1.2, 0.0))
    _move(folder / "IM0007.dcm", (0.3, 0.4, 0.0))
    with pytest.raises(InputError, match=r"2 of 8 slices lie off .*: IM0000.dcm \(slice 0\) by 1.20 mm, IM0007.dcm \(slice 7\) by 0.50 mm \("):
        read_volume(folder)


def test_tolerance_accepts_decimal_rounding_not_a_tenth_of_a_pixel(vh, tmp_path):
    folder = _series(vh, tmp_path)
    for path in sorted(folder.iterdir()):
        _move(path, (0.0031, -0.0042, 0.0), decimals=2)  # 2-decimal DS strings: up to 0.005 mm per coordinate
    assert read_volume(folder).shape == (8, 20, 24)
    _move(folder / "IM0003.dcm", (0.08, 0.0, 0.0), decimals=2)  # 0.08 mm > 0.1 x 0.7 mm
    with pytest.raises(InputError, match=r"IM0003.dcm \(slice 3\) by 0.08 mm \(tolerance 0.07 mm\)"):
        read_volume(folder)


def test_gantry_tilt_is_collinear_even_rounded_and_a_stray_slice_in_it_is_not(vh, tmp_path):
    affine = _tilted(vh)
    folder = _series(vh, tmp_path, affine)
    for path in sorted(folder.iterdir()):
        _move(path, decimals=3)
    volume = read_volume(folder)
    np.testing.assert_allclose(volume.affine, affine, atol=2e-3)
    _move(folder / "IM0005.dcm", (0.0, 0.0, 0.0), decimals=3)
    _move(folder / "IM0005.dcm", (-2.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"1 of 8 slices lies off .*: IM0005.dcm \(slice 5\) by 2.00 mm"):
        read_volume(folder)


def test_2d_inputs_say_3d_only_not_the_raster_command(vh, tmp_path):
    """`segpipe raster` is the land-cover command, no place for a 2D CT/MR slice."""
    folder = _series(vh, tmp_path, n=1)
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert caught.value.fix == "segpipe segments 3D series only: give a series of at least 2 slices"
    flat = vh.write_nifti(tmp_path / "flat.nii.gz", np.zeros((1, 8, 9), np.int16), np.eye(4))
    with pytest.raises(InputError, match="2D image") as caught:
        read_volume(flat)
    assert caught.value.fix == "segpipe segments 3D volumes only: give one with at least 2 voxels along each axis"
