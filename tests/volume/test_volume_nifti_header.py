"""NIfTI headers read as the standard says: spatial units, singular affines, missing voxel sizes, file-type mix-ups.

Every bad header is refused at read time (before any model runs) with an InputError naming the file,
the problem and the fix.
"""

from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.readers import read_volume
from pipeline.volume.run import segment_volume

CPU = VolumeOptions(device="cpu")


def _nifti(path, data_zyx, affine, *, units="mm", qcode=1, scode=1):
    img = nib.Nifti1Image(np.asarray(data_zyx).T, affine=None)
    img.set_sform(affine, code=scode)
    img.set_qform(affine, code=qcode)
    img.header.set_xyzt_units(xyz=units)
    nib.save(img, path)
    return path


class NeverCalled:
    """A model that fails the test if the engine ever calls it."""

    calls = 0

    def __call__(self, x):  # pragma: no cover - reaching it is the failure
        NeverCalled.calls += 1
        raise AssertionError("the model ran on a study that should have been refused at read time")


@pytest.mark.parametrize(("units", "factor"), [("meter", 1e-3), ("micron", 1e3), ("unknown", 1.0)])
def test_spatial_units_become_millimetres(vh, tmp_path, units, factor):
    hu = vh.ct_crop((6, 20, 24))
    affine_mm = vh.oblique_affine((0.7, 0.8, 2.5))
    in_units = np.diag([factor] * 3 + [1.0]) @ affine_mm  # the same grid written in metres / microns
    path = _nifti(tmp_path / f"ct_{units}.nii.gz", hu, in_units, units=units)
    vol = read_volume(path)
    np.testing.assert_allclose(vol.affine, affine_mm, rtol=1e-6, atol=1e-6)
    assert vol.voxel_volume_mm3 == pytest.approx(0.7 * 0.8 * 2.5, rel=1e-6)
    assert vol.header.xyz_units == units  # the header the labels copy keeps the file's own units
    np.testing.assert_allclose(vol.header.sform, in_units, rtol=1e-6, atol=1e-9)


def test_metre_copy_of_a_ct_gives_the_same_ml_and_labels_overlay_it(vh, tmp_path, pv_model):
    hu = vh.ct_crop((12, 40, 48))
    affine_mm = vh.axis_affine("LPS", (0.8, 0.9, 2.5))
    mm = _nifti(tmp_path / "ct_mm.nii.gz", hu, affine_mm, qcode=1, scode=2)
    metres = _nifti(tmp_path / "ct_m.nii.gz", hu, np.diag([1e-3] * 3 + [1.0]) @ affine_mm, units="meter", qcode=1, scode=2)
    spec = vh.per_voxel_spec(tmp_path, window=[8, 16, 16])
    a = segment_volume(mm, spec, tmp_path / "out", CPU, model=pv_model)
    b = segment_volume(metres, spec, tmp_path / "out", CPU, model=pv_model)
    for lab_a, lab_b in zip(a.stats.labels, b.stats.labels):
        assert lab_b.voxel_count == lab_a.voxel_count
        assert lab_b.volume_ml == pytest.approx(lab_a.volume_ml, rel=1e-5)  # the header stores float32
        np.testing.assert_allclose(lab_b.centroid_ras, lab_a.centroid_ras, atol=1e-4)
    assert b.stats.label("soft").volume_ml > 1.0  # a real amount, not 1e-9 of it
    out, ref = nib.load(b.outputs.labels), nib.load(metres)
    np.testing.assert_array_equal(out.affine, ref.affine)  # still overlays the metre input
    assert out.header.get_xyzt_units()[0] == "meter"
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(nib.load(a.outputs.labels).dataobj))


def test_unknown_unit_code_is_refused(tmp_path):
    path = _nifti(tmp_path / "odd.nii.gz", np.zeros((3, 4, 5), np.int16), np.eye(4))
    img = nib.load(path)
    img.header["xyzt_units"] = 5  # not a NIfTI spatial unit code
    nib.save(img, path)
    with pytest.raises(InputError, match=r"odd.nii.gz: unknown spatial unit code 5 .*set_xyzt_units"):
        read_volume(path)


def test_zero_length_axis_refused_before_the_model_runs(vh, tmp_path):
    affine = np.diag([3.0, 3.0, 0.0, 1.0])  # sform column k = 0: a singular voxel-to-world matrix
    img = nib.Nifti1Image(vh.ct_crop((6, 20, 24)).T, affine=None)
    img.set_sform(affine, code=2)
    path = tmp_path / "singular.nii.gz"
    nib.save(img, path)
    expected = (
        f"{path}: degenerate affine: axis 3 has zero length, the header's voxel-to-world matrix is singular "
        "(fix the header's sform/qform)"
    )
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert str(info.value) == expected
    spec = vh.per_voxel_spec(tmp_path, window=[8, 16, 16])
    with pytest.raises(InputError, match="axis 3 has zero length"):
        segment_volume(path, spec, tmp_path / "out", CPU, model=NeverCalled())
    assert NeverCalled.calls == 0 and not list((tmp_path / "out").glob("singular*"))


def test_coplanar_axes_refused(tmp_path):
    affine = np.eye(4)
    affine[:3, 2] = [1.0, 1.0, 0.0]  # k in the plane of i and j
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine=None)
    img.set_sform(affine, code=1)
    nib.save(img, tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="voxel axes lie in one plane"):
        read_volume(tmp_path / "flat.nii.gz")


def _no_voxel_size(path, *, qcode=0):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine=None)
    img.header.set_qform(np.eye(4) if qcode else None, code=qcode)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = 0
    nib.save(img, path)
    return path


def test_no_voxel_size_refused(tmp_path):
    path = _no_voxel_size(tmp_path / "nosize.nii.gz")
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert str(info.value) == (
        f"{path}: no voxel size in the header (pixdim 0 0 0, no qform/sform): volumes would be meaningless "
        "(set the voxel size, e.g. with nibabel img.header.set_zooms)"
    )
    path = _no_voxel_size(tmp_path / "qonly.nii.gz", qcode=1)  # the qform scales its rotation by pixdim
    with pytest.raises(InputError, match=r"no voxel size in the header \(pixdim 0 0 0, no sform, the qform takes"):
        read_volume(path)


def test_nan_pixdim_refused(tmp_path):
    path = tmp_path / "nanpix.nii"
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine=None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    raw[84:88] = struct.pack("<f", float("nan"))  # pixdim[2] (pixdim is float32[8] at byte 76)
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"no voxel size in the header \(pixdim 1 nan 1, no qform/sform\)"):
        read_volume(path)


def test_codes_zero_with_a_voxel_size_still_read(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine=None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    img.header.set_zooms((2.0, 3.0, 4.0))
    nib.save(img, tmp_path / "analyze_style.nii.gz")
    assert read_volume(tmp_path / "analyze_style.nii.gz").voxel_volume_mm3 == pytest.approx(24.0)


def _plain_and_gz(tmp_path):
    path = _nifti(tmp_path / "src.nii", np.zeros((3, 4, 5), np.int16), np.eye(4))
    return path.read_bytes(), gzip.compress(path.read_bytes())


def test_gzip_named_nii_and_plain_named_nii_gz(tmp_path):
    plain, gz = _plain_and_gz(tmp_path)
    (tmp_path / "a.nii").write_bytes(gz)
    with pytest.raises(InputError) as info:
        read_volume(tmp_path / "a.nii")
    assert str(info.value) == f"{tmp_path / 'a.nii'}: gzip-compressed, but named .nii (rename it to a.nii.gz)"
    (tmp_path / "b.nii.gz").write_bytes(plain)
    with pytest.raises(InputError) as info:
        read_volume(tmp_path / "b.nii.gz")
    assert str(info.value) == f"{tmp_path / 'b.nii.gz'}: not gzip-compressed, but named .nii.gz (rename it to b.nii)"


def test_files_without_a_nifti_name_say_what_they_are(vh, tmp_path):
    plain, gz = _plain_and_gz(tmp_path)
    (tmp_path / "case7").write_bytes(gz)
    with pytest.raises(InputError, match=r"case7: a gzip-compressed NIfTI-1 file without the .nii.gz extension \(rename it to case7.nii.gz\)"):
        read_volume(tmp_path / "case7")
    (tmp_path / "case8.img").write_bytes(plain)
    with pytest.raises(InputError, match=r"case8.img: a NIfTI-1 file without the .nii extension \(rename it to case8.img.nii\)"):
        read_volume(tmp_path / "case8.img")
    n2 = tmp_path / "n2.nii"
    nib.save(nib.Nifti2Image(np.zeros((3, 4, 5), np.int16), np.eye(4)), n2)
    n2.rename(tmp_path / "case9")
    with pytest.raises(InputError, match=r"case9: a NIfTI-2 file without the .nii extension"):
        read_volume(tmp_path / "case9")
    (tmp_path / "notes").write_bytes(b"hello")
    with pytest.raises(InputError, match=r"notes: unsupported file type \(no extension\): a file that is neither NIfTI nor DICOM"):
        read_volume(tmp_path / "notes")
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(InputError, match=r"scan.dcm: unsupported file type '.dcm': a file that is neither"):
        read_volume(tmp_path / "scan.dcm")
    folder = vh.write_dicom_series(tmp_path / "series", vh.ct_crop((2, 8, 8)), np.eye(4))
    one = next(folder.iterdir())
    one.rename(tmp_path / "IM0001")
    with pytest.raises(InputError, match=r"IM0001: a single DICOM file, not a series \(pass the series folder instead"):
        read_volume(tmp_path / "IM0001")


def test_folder_of_nifti_files_is_not_a_dicom_series(tmp_path):
    folder = tmp_path / "niftis"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        _nifti(folder / name, np.zeros((3, 4, 5), np.int16), np.eye(4))
    with pytest.raises(InputError) as info:
        read_volume(folder)
    assert str(info.value) == f"{folder}: this folder holds 2 NIfTI files, not a DICOM series (pass the files ({folder}/*.nii.gz))"
