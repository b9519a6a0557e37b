"""DICOM series folders as found in practice: truncated slices, non-image objects next to the images,
multi-frame objects, gantry tilt."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.readers import read_volume
from pipeline.volume.run import segment_volume

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _series(vh, tmp_path, name="series", shape=(4, 20, 24), **kwargs):
    return vh.write_dicom_series(tmp_path / name, vh.ct_crop(shape).astype(np.float64), vh.axis_affine("LPS", (0.7, 0.8, 2.5)), **kwargs)


def test_truncated_uncompressed_slice_says_truncated(vh, tmp_path):
    folder = _series(vh, tmp_path)
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-100])  # pixel data is the last element
    with pytest.raises(InputError) as info:
        read_volume(folder)
    expected = 20 * 24 * 2
    assert str(info.value) == (
        f"{victim}: pixel data truncated ({expected - 100} of {expected} bytes): the file is incomplete (re-transfer or re-export the series)"
    )
    assert "pip install" not in str(info.value)


def test_damaged_compressed_slice_is_not_a_missing_decoder(vh, tmp_path):
    pytest.importorskip("openjpeg")
    from pydicom.uid import JPEG2000Lossless

    folder = vh.write_dicom_series(tmp_path / "j2k", vh.ct_crop((3, 64, 64)).astype(np.float64), np.eye(4), transfer_syntax=JPEG2000Lossless)
    victim = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(victim)
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    data = next(iter(frame))
    ds.PixelData = pydicom.encaps.encapsulate([data[: len(data) // 3]])  # a third of the codestream
    ds.save_as(victim)
    with pytest.raises(InputError, match=r"cannot decode pixel data \(transfer syntax JPEG 2000 .*damaged or incomplete; re-transfer") as info:
        read_volume(folder)
    assert "pip install" not in str(info.value) and str(victim) in str(info.value)


def test_missing_decoder_keeps_the_install_hint(vh, tmp_path, monkeypatch):
    pytest.importorskip("openjpeg")
    import pydicom.pixels
    from pydicom.uid import JPEG2000Lossless

    folder = vh.write_dicom_series(tmp_path / "j2k", vh.ct_crop((3, 64, 64)).astype(np.float64), np.eye(4), transfer_syntax=JPEG2000Lossless)

    class Unavailable:
        is_available = False

    def no_pixels(self):
        raise RuntimeError("Unable to decompress 'JPEG 2000 Image Compression (Lossless Only)' pixel data because all plugins are missing")

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_pixels))
    with pytest.raises(InputError, match=r"install the decoders: pip install pylibjpeg"):
        read_volume(folder)


def _object(folder, name, *, sop_class, modality, series_uid=None, pixels=None, frames=None):
    """A minimal DICOM object (no geometry) of ``sop_class``/``modality``, with pixel data when given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesDescription = name
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


def test_non_image_objects_are_ignored(vh, tmp_path):
    folder = _series(vh, tmp_path)
    extra = folder / "derived"
    extra.mkdir()
    image = np.zeros((20, 24))
    _object(extra, "seg.dcm", sop_class="1.2.840.10008.5.1.4.1.1.66.4", modality="SEG", pixels=image)
    _object(extra, "rtstruct.dcm", sop_class="1.2.840.10008.5.1.4.1.1.481.3", modality="RTSTRUCT")
    _object(extra, "sr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.11", modality="SR")
    _object(extra, "pr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.11.1", modality="PR")
    _object(extra, "ko.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.59", modality="KO")
    _object(extra, "nopixels.dcm", sop_class="1.2.840.10008.5.1.4.1.1.2", modality="CT")  # a CT header without pixels
    vol = read_volume(folder)
    assert vol.shape == (4, 20, 24) and len(vol.dicom.files) == 4
    assert all(f.parent == folder for f in vol.dicom.files)


def test_only_non_image_objects_says_so(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    _object(folder, "sr.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.11", modality="SR")
    _object(folder, "seg.dcm", sop_class="1.2.840.10008.5.1.4.1.1.66.4", modality="SEG", pixels=np.zeros((4, 4)))
    with pytest.raises(InputError, match=r"no DICOM image files found \(only 2 non-image object\(s\): SEG object, SR object\)"):
        read_volume(folder)


def test_multi_frame_series_counted_in_frames(vh, tmp_path):
    folder = _series(vh, tmp_path, series_uid="1.2.3.1", description="venous")
    _object(folder, "mf.dcm", sop_class="1.2.840.10008.5.1.4.1.1.2.1", modality="CT", series_uid="1.2.3.2", pixels=np.zeros((3, 8, 8)), frames=3)
    with pytest.raises(InputError, match=r"2 series in one folder: 1.2.3.1 \(CT, 'venous', 4 slices\); 1.2.3.2 \(CT, 'mf.dcm', 1 file, 3 frames\)"):
        read_volume(folder)


def test_rerun_with_the_seg_inside_the_series_folder(vh, tmp_path, pv_model):
    """`segpipe volume dcm/CT --out dcm/CT/seg` twice: the SEG of the first run is not a second series."""
    folder = _series(vh, tmp_path, name="CT_in", shape=(6, 20, 24))
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    first = segment_volume(folder, spec, folder / "seg", VolumeOptions(device="cpu"), model=pv_model)
    assert first.dicom_seg and first.outputs.seg.is_file()
    # the first run's outputs inside the series folder are not a change of its input
    assert segment_volume(folder, spec, folder / "seg", VolumeOptions(device="cpu"), model=pv_model).skipped
    again = segment_volume(folder, spec, folder / "seg", VolumeOptions(device="cpu", force=True), model=pv_model)
    assert not again.skipped and again.dicom_seg
    assert np.array_equal(np.asarray(nib.load(again.outputs.labels).dataobj), np.asarray(nib.load(first.outputs.labels).dataobj))


def _tilted(vh, degrees=20.0):
    """A gantry-tilted grid: the slice step leans along y by ``degrees`` (a shear, not a rotation)."""
    affine = vh.axis_affine("LPS", (0.7, 0.8, 2.5))
    affine[1, 2] = 2.5 * np.tan(np.deg2rad(degrees))
    return affine


def test_gantry_tilt_labels_carry_the_exact_sform_and_an_untilted_qform(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24)).astype(np.float64)
    affine = _tilted(vh)
    folder = vh.write_dicom_series(tmp_path / "tilt", hu, affine)
    vol = read_volume(folder)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    result = segment_volume(folder, spec, tmp_path / "out", VolumeOptions(device="cpu"), model=pv_model)
    out = nib.load(result.outputs.labels)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(out.header.get_sform(), affine, atol=1e-4)
    untilted = affine.copy()
    untilted[:3, 2] = [0.0, 0.0, np.linalg.norm(affine[:3, 2])]  # the slice normal (S), the step's length: as ITK reads the series
    np.testing.assert_allclose(out.header.get_qform(), untilted, atol=1e-4)
    np.testing.assert_allclose(out.affine, affine, atol=1e-4)  # what nibabel (and any reader) places the voxels with
    assert np.array_equal(np.asarray(out.dataobj).T, vh.per_voxel_answer(hu))


def test_untilted_dicom_keeps_qform_code_1(vh, tmp_path, pv_model):
    folder = _series(vh, tmp_path, shape=(6, 20, 24))
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    result = segment_volume(folder, spec, tmp_path / "out", VolumeOptions(device="cpu"), model=pv_model)
    out = nib.load(result.outputs.labels)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(out.header.get_qform(), out.header.get_sform(), atol=1e-4)


def test_sheared_nifti_labels_still_copy_the_input_header(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    affine = _tilted(vh)
    img = nib.Nifti1Image(hu.T, affine=None)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)  # nibabel stores the orthogonalised qform, as scanners' converters do
    path = tmp_path / "tilt.nii.gz"
    nib.save(img, path)
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    result = segment_volume(path, spec, tmp_path / "out", VolumeOptions(device="cpu"), model=pv_model)
    out, ref = nib.load(result.outputs.labels), nib.load(path)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform(), atol=1e-5)
    np.testing.assert_array_equal(out.affine, ref.affine)


def test_is_sheared_tells_a_tilt_from_rounding(vh):
    from pipeline.volume.volume import HeaderInfo, is_sheared

    oblique = vh.oblique_affine((0.7, 0.8, 2.5))
    assert not is_sheared(oblique) and not is_sheared(oblique @ np.diag([1.0, -1.0, 1.0, 1.0]))
    rounded = oblique.copy()
    rounded[:3, :3] += 1e-7  # decimal-string rounding of ImageOrientationPatient
    assert not is_sheared(rounded) and HeaderInfo.from_affine(rounded).qform_code == 1
    assert is_sheared(_tilted(vh, degrees=1.0))
    tilted = HeaderInfo.from_affine(_tilted(vh))
    assert tilted.qform_code == 1 and not is_sheared(np.asarray(tilted.qform)) and np.array_equal(np.asarray(tilted.sform), _tilted(vh))
