"""read_volume: NIfTI and DICOM series, geometry, HU, and clear errors for bad input."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.volume.preprocess import plan_grid, reorient
from pipeline.volume.readers import read_volume, study_stem


def as_ras(volume):
    """(data, affine) reoriented to RAS: compares two readings of one image independent of axis order."""
    grid = plan_grid(volume.shape, volume.affine, orientation="RAS")
    return reorient(volume.data, grid), grid.oriented_affine


def test_nifti_ct_axes_affine_and_header(vh):
    path = vh.med_file("ct_abdomen_small.nii.gz")
    img = nib.load(path)
    vol = read_volume(path)
    assert vol.shape == (30, 101, 122) and vol.data.dtype == np.float32 and vol.data.flags.c_contiguous
    assert np.array_equal(vol.data, np.asarray(img.dataobj).T.astype(np.float32))
    assert vol.data[5, 50, 60] == np.asarray(img.dataobj)[60, 50, 5]  # data[z, y, x] = nifti[i=x, j=y, k=z]
    assert np.array_equal(vol.affine, img.affine)
    assert vol.orientation == "RAS" and vol.spacing == (3.0, 3.0, 3.0)
    assert (vol.header.qform_code, vol.header.sform_code) == (0, 2)
    assert vol.modality == "unknown" and not vol.data.flags.writeable


def test_nifti_mr_las(vh):
    vol = read_volume(vh.med_file("mr_brain_t1.nii.gz"))
    assert vol.shape == (25, 256, 256) and vol.orientation == "LAS"
    assert vol.spacing == pytest.approx((6.5, 0.78125, 0.78125))


def test_stem():
    assert study_stem("/a/b/case1.nii.gz") == "case1"
    assert study_stem("/a/b/case2.nii") == "case2"
    assert study_stem("/a/b/series_07") == "series_07"


def test_4d_needs_volume_index(tmp_path):
    data = np.arange(2 * 3 * 4 * 3, dtype=np.int16).reshape(2, 3, 4, 3)  # (X, Y, Z, T)
    path = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(InputError, match=r"fmri.nii.gz: 4D image with 3 volumes.*--volume-index 0..2"):
        read_volume(path)
    vol = read_volume(path, volume_index=2)
    assert np.array_equal(vol.data, data[..., 2].T.astype(np.float32))
    with pytest.raises(InputError, match="out of range"):
        read_volume(path, volume_index=3)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("trunc.nii.gz", "truncated", "truncated or corrupt"),
        ("infs.nii.gz", "inf", r"1 inf voxel\(s\), first at voxel \(i, j, k\) = \(1, 2, 3\)"),  # NaN is nodata: test_volume_nodata
        ("empty.nii.gz", "zero", "zero-size dimension"),
        ("slice.nii.gz", "2d", "2D image"),
        ("flat.nii.gz", "single-slice", "2D image"),
        ("scan.mha", "other", "unsupported file type"),
    ],
)
def test_bad_nifti_names_file_problem_fix(vh, tmp_path, name, make, message):
    path = tmp_path / name
    if make == "truncated":
        vh.write_nifti(path, np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32), np.eye(4))
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    elif make == "inf":
        data = np.zeros((5, 6, 7), np.float32)
        data[3, 2, 1] = -np.inf
        data[0, 0, 0] = np.nan
        vh.write_nifti(path, data, np.eye(4))
    elif make == "zero":
        nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), path)
    elif make == "2d":
        nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), path)
    elif make == "single-slice":
        nib.save(nib.Nifti1Image(np.zeros((8, 9, 1), np.float32), np.eye(4)), path)
    else:
        path.write_bytes(b"not a volume")
    with pytest.raises(InputError, match=message) as info:
        read_volume(path)
    assert str(path) in str(info.value) and info.value.fix


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")


def _hu(vh, shape=(6, 20, 24)) -> np.ndarray:
    return vh.ct_crop(shape).astype(np.float64)


@pytest.mark.parametrize("geometry", ["LPS", "RAS", "oblique", "oblique-flipped"])
def test_dicom_matches_nifti_equivalent(vh, tmp_path, geometry):
    hu = _hu(vh)
    affine = {
        "LPS": vh.axis_affine("LPS", (0.7, 0.8, 2.5)),
        "RAS": vh.axis_affine("RAS", (0.7, 0.8, 2.5)),
        "oblique": vh.oblique_affine((0.7, 0.8, 2.5)),
        "oblique-flipped": vh.oblique_affine((0.7, 0.8, 2.5)) @ np.diag([1.0, 1.0, -1.0, 1.0]),
    }[geometry]
    shuffled = np.random.default_rng(1).permutation(hu.shape[0])
    folder = vh.write_dicom_series(tmp_path / "series", hu, affine, slope=0.5, intercept=-2000.0, name_order=shuffled)
    nifti = vh.write_nifti(tmp_path / "same.nii.gz", hu.astype(np.float32), affine)
    dcm, nii = read_volume(folder), read_volume(nifti)
    assert dcm.modality == "CT" and dcm.dicom is not None and len(dcm.dicom.sop_instance_uids) == hu.shape[0]
    d_data, d_aff = as_ras(dcm)
    n_data, n_aff = as_ras(nii)
    assert np.array_equal(d_data, n_data)  # HU exact: stored * 0.5 - 2000
    np.testing.assert_allclose(d_aff, n_aff, atol=1e-6)
    assert dcm.voxel_volume_mm3 == pytest.approx(0.7 * 0.8 * 2.5, rel=1e-8)
    # slices come out ordered along the normal, whatever the file names
    normal = np.cross(*np.asarray(dcm.affine[:3, :2]).T)
    assert normal @ dcm.affine[:3, 2] > 0


def test_dicom_jpeg2000_lossless(vh, tmp_path):
    pytest.importorskip("openjpeg")
    from pydicom.uid import JPEG2000Lossless

    hu = _hu(vh, (3, 64, 64))  # openjpeg's default 6 resolutions need tiles of >= 32 px
    affine = vh.oblique_affine((0.7, 0.8, 2.5))
    plain = read_volume(vh.write_dicom_series(tmp_path / "plain", hu, affine))
    folder = vh.write_dicom_series(tmp_path / "j2k", hu, affine, transfer_syntax=JPEG2000Lossless)
    import pydicom

    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == JPEG2000Lossless
    j2k = read_volume(folder)
    assert np.array_equal(j2k.data, plain.data) and np.array_equal(j2k.data, hu.astype(np.float32))
    np.testing.assert_allclose(j2k.affine, plain.affine)


def test_dicom_missing_slice_names_gap(vh, tmp_path):
    folder = vh.write_dicom_series(tmp_path / "gap", _hu(vh), vh.axis_affine("LPS", (0.7, 0.8, 2.5)), skip=(3,))
    with pytest.raises(InputError, match=r"1 missing slice\(s\) between slice 2 .* and slice 3 .*gap 5.00 mm where the spacing is 2.50 mm"):
        read_volume(folder)


def test_dicom_uneven_spacing(vh, tmp_path):
    hu = _hu(vh)
    folder = vh.write_dicom_series(tmp_path / "uneven", hu, vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    import pydicom

    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[-1])
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], float(ds.ImagePositionPatient[2]) + 1.0]
    ds.save_as(files[-1])
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_volume(folder)


def test_dicom_two_series_listed_and_selectable(vh, tmp_path):
    hu = _hu(vh, (4, 20, 24))
    affine = vh.axis_affine("LPS", (0.7, 0.8, 2.5))
    folder = tmp_path / "study"
    vh.write_dicom_series(folder / "a", hu, affine, series_uid="1.2.3.1", description="venous")
    vh.write_dicom_series(folder / "b", hu[:3], affine, series_uid="1.2.3.2", description="arterial")
    with pytest.raises(InputError, match=r"2 series in one folder: 1.2.3.1 \(CT, 'venous', 4 slices\); 1.2.3.2 \(CT, 'arterial', 3 slices\)") as info:
        read_volume(folder)
    assert "--series-uid" in info.value.fix
    assert read_volume(folder, series_uid="1.2.3.2").shape == (3, 20, 24)
    with pytest.raises(InputError, match="series 9.9 not found"):
        read_volume(folder, series_uid="9.9")


def test_dicom_single_slice_and_empty_folder(vh, tmp_path):
    folder = vh.write_dicom_series(tmp_path / "one", _hu(vh, (1, 20, 24)), np.eye(4))
    with pytest.raises(InputError, match="2D image"):
        read_volume(folder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM image files"):
        read_volume(tmp_path / "empty")
