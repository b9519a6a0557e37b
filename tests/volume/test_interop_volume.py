"""Study outputs as the tools clinicians and analysts open them: ITK (3D Slicer, ITK-SNAP), DICOM SEG readers, netCDF.

* ITK reads NIfTI geometry its own way (qform preferred when the sform is not orthonormal, LPS): the
  labels' origin, spacing, direction and size in SimpleITK must equal SimpleITK's reading of the input
  (the NIfTI file, or the DICOM series through ``ImageSeriesReader``).
* DICOM SEG: frames on their source slices, names in a declared character set (``dciodvfy`` when installed).
* ``stats.zarr`` exports with ``to_netcdf``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import xarray as xr

from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import segment_volume

OPTIONS = VolumeOptions(device="cpu")
TOL = 1e-4  # mm, and direction cosines


def _itk_geometry(image):
    return np.array(image.GetOrigin()), np.array(image.GetSpacing()), np.array(image.GetDirection()), tuple(image.GetSize())


def _assert_same_itk_geometry(sitk, input_image, labels_path):
    labels = sitk.ReadImage(str(labels_path))  # raised "ITK only supports orthonormal direction cosines" for a tilted series
    want, got = _itk_geometry(input_image), _itk_geometry(labels)
    assert got[3] == want[3]
    for name, a, b in zip(("origin", "spacing", "direction"), got[:3], want[:3]):
        np.testing.assert_allclose(a, b, atol=TOL, err_msg=f"ITK {name} of the labels differs from the input's")
    assert labels.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), np.asarray(nib.load(labels_path).dataobj).T)  # no scaling applied


def _tilted(vh):
    affine = vh.axis_affine("LPS", (0.7, 0.8, 2.5))
    affine[1, 2] = 2.5 * np.tan(np.deg2rad(20.0))  # gantry tilt: the slice step leans along y
    return affine


def _variants(vh):
    """NIfTI headers ITK and nibabel read differently: (affine, qform affine, qform_code, sform_code)."""
    oblique = vh.oblique_affine()
    return {
        "oblique q1 s1": (oblique, oblique, 1, 1),
        "qform differs from sform": (oblique, vh.oblique_affine(origin=(5.0, 7.0, 9.0)), 1, 2),
        "sform only": (oblique, oblique, 0, 1),
        "qform only": (oblique, oblique, 1, 0),
        "no codes": (oblique, oblique, 0, 0),
        "LAS left-handed": (vh.axis_affine("LAS"), vh.axis_affine("LAS"), 1, 1),
    }


@pytest.mark.parametrize("name", ["oblique q1 s1", "qform differs from sform", "sform only", "qform only", "no codes", "LAS left-handed"])
def test_nifti_labels_where_itk_places_the_input(vh, tmp_path, pv_model, name):
    sitk = pytest.importorskip("SimpleITK")
    sform, qform, qcode, scode = _variants(vh)[name]
    img = nib.Nifti1Image(vh.ct_crop((6, 20, 24)).T, affine=None)
    img.set_sform(sform, code=scode)
    img.set_qform(qform, code=qcode)
    path = tmp_path / "study.nii.gz"
    nib.save(img, path)
    result = segment_volume(path, vh.per_voxel_spec(tmp_path, window=[4, 16, 16]), tmp_path / "out", OPTIONS, model=pv_model)
    _assert_same_itk_geometry(sitk, sitk.ReadImage(str(path)), result.outputs.labels)
    header = nib.load(result.outputs.labels).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (qcode, scode)
    assert header.get_data_dtype() == np.uint8 and int(header["intent_code"]) == 0


@pytest.mark.parametrize("geometry", ["oblique", "gantry tilt"])
def test_dicom_labels_where_itk_places_the_series(vh, tmp_path, pv_model, geometry):
    sitk = pytest.importorskip("SimpleITK")
    hu = vh.ct_crop((6, 20, 24)).astype(np.float64)
    affine = vh.oblique_affine() if geometry == "oblique" else _tilted(vh)
    folder = vh.write_dicom_series(tmp_path / "CT", hu, affine, name_order=np.arange(6)[::-1])
    result = segment_volume(folder, vh.per_voxel_spec(tmp_path, window=[4, 16, 16]), tmp_path / "out", OPTIONS, model=pv_model)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    _assert_same_itk_geometry(sitk, reader.Execute(), result.outputs.labels)
    np.testing.assert_allclose(nib.load(result.outputs.labels).affine, affine, atol=TOL)  # nibabel (sform): the exact, tilted grid


def _seg_for(vh, tmp_path, pv_model, class_names, *, charset=None, patient="Test^Phantom"):
    hu = vh.ct_crop((6, 20, 24)).astype(np.float64)
    folder = vh.write_dicom_series(tmp_path / "CT", hu, vh.oblique_affine(), name_order=np.array([3, 0, 5, 1, 4, 2]))
    if charset is not None:
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet = charset
            ds.PatientName = patient
            ds.save_as(path)
    colors = ["#000000", "#e31a1c", "#1f78b4"]
    classes = [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(class_names, colors))]
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16], classes=classes)
    result = segment_volume(folder, spec, tmp_path / "out", OPTIONS, model=pv_model)
    assert result.dicom_seg
    return folder, result


def _dciodvfy_errors(path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("charset", [None, "ISO_IR 100"], ids=["no charset", "latin-1 source"])
def test_seg_keeps_non_ascii_names(vh, tmp_path, pv_model, charset):
    names = ["Hintergrund", "Weichteil – Leber", "Knochen µ"]
    _, result = _seg_for(vh, tmp_path, pv_model, names, charset=charset, patient="Müller^Jürgen")
    seg = pydicom.dcmread(result.outputs.seg)
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == names[1:]  # was "Weichteil ? Leber", and "Knochen µ" as undeclared latin-1
    if charset is not None:
        assert str(seg.PatientName) == "Müller^Jürgen"  # the copied patient data re-encoded, not garbled
    assert _dciodvfy_errors(result.outputs.seg) == []


def test_seg_frames_on_their_source_slices(vh, tmp_path, pv_model):
    folder, result = _seg_for(vh, tmp_path, pv_model, ["background", "soft", "dense"])
    seg = pydicom.dcmread(result.outputs.seg)
    assert "SpecificCharacterSet" not in seg  # ASCII names: the source's (default) repertoire is kept
    sources = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p) for p in folder.iterdir())}
    first = next(iter(sources.values()))
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (first.StudyInstanceUID, first.FrameOfReferenceUID, first.PatientID)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == set(sources)
    labels = np.asarray(nib.load(result.outputs.labels).dataobj).T  # (Z, Y, X), z along the slice normal
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    z_of = {uid: z for z, uid in enumerate(sorted(sources, key=lambda u: normal @ np.array(sources[u].ImagePositionPatient, dtype=float)))}
    frames = seg.pixel_array.reshape(-1, *labels.shape[1:])
    seen = set()
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(group.PlanePositionSequence[0].ImagePositionPatient, sources[uid].ImagePositionPatient, atol=1e-6)
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)  # segment k = class id k here
        np.testing.assert_array_equal(frame.astype(bool), labels[z_of[uid]] == number)
        seen.add((z_of[uid], number))
    assert seen == {(z, k) for z in range(labels.shape[0]) for k in (1, 2) if (labels[z] == k).any()}  # no labelled slice left out
    assert _dciodvfy_errors(result.outputs.seg) == []


@pytest.mark.parametrize("engine", [e for e, m in (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy")) if importlib.util.find_spec(m)])
def test_volume_stats_export_to_netcdf(vh, tmp_path, pv_model, engine):
    path = vh.write_nifti(tmp_path / "study.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    result = segment_volume(path, vh.per_voxel_spec(tmp_path, window=[4, 16, 16]), tmp_path / "out", OPTIONS, model=pv_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(result.outputs.labels.parent / "stats.zarr").load()
    ds.to_netcdf(tmp_path / "stats.nc", engine=engine)
    with xr.open_dataset(tmp_path / "stats.nc", engine=engine) as back:
        assert [str(v) for v in back["label"].values] == ["background", "soft", "dense"]
        np.testing.assert_array_equal(back["volume_ml"].values, ds["volume_ml"].values)
        np.testing.assert_array_equal(back["segmented"].values.astype(bool), ds["segmented"].values)
