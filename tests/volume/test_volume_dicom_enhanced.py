"""Enhanced (multi-frame) DICOM input: one object, many frames, geometry in the functional groups.

The objects are made by an independent tool, highdicom's legacy converter (LegacyConvertedEnhancedCT/MRImage),
from a real single-frame series (shared CT and MR data); the enhanced reading must equal the single-frame
reading of the same images (affine, voxels, labels), and highdicom's own volume of the object
(``Image.get_volume``) cross-checks the geometry. Objects that are not one regular 3D grid are refused
naming the file, the problem and the fix.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MRImageStorage

from pipeline.errors import InputError
from pipeline.volume.batch import segment_volumes
from pipeline.volume.options import VolumeOptions
from pipeline.volume.readers import read_volume
from pipeline.volume.run import segment_volume

hd = pytest.importorskip("highdicom")

CPU = VolumeOptions(device="cpu")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORDER = np.array([3, 0, 5, 1, 4, 2])  # file names out of z order: the converter gets them unsorted


def _tilted(vh):
    affine = vh.axis_affine("LPS", (0.7, 0.8, 2.5))
    affine[1, 2] = 2.5 * np.tan(np.deg2rad(20.0))  # gantry tilt: the slice step leans along y
    return affine


def _enhanced(series, path, *, series_uid=None):
    """Convert the single-frame series in ``series`` into one Legacy Converted Enhanced CT/MR object at ``path``."""
    sources = [pydicom.dcmread(p) for p in sorted(series.iterdir()) if p.suffix == ".dcm"]
    convert = hd.legacy.LegacyConvertedEnhancedMRImage if sources[0].Modality == "MR" else hd.legacy.LegacyConvertedEnhancedCTImage
    obj = convert(sources, series_instance_uid=series_uid or hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.save_as(path)
    return path


def _ct(vh, tmp_path, affine=None, shape=(6, 20, 24), **kwargs):
    """A single-frame CT series of a real CT crop, and its enhanced conversion ``enhanced/ct.dcm``."""
    hu = vh.ct_crop(shape).astype(np.float64)
    series = vh.write_dicom_series(tmp_path / "single", hu, vh.oblique_affine() if affine is None else affine, name_order=ORDER[: shape[0]], **kwargs)
    return hu, series, _enhanced(series, tmp_path / "enhanced" / "ct.dcm")


def _mr_series(vh, folder, shape=(6, 24, 28)):
    """A single-frame MR series (no rescale) of a crop of the shared brain MRI, on its LAS grid."""
    img = nib.load(vh.med_file("mr_brain_t1.nii.gz"))
    data = np.asarray(img.dataobj).T  # (25, 256, 256)
    z0, y0, x0 = 10, 100, 100
    crop = data[z0 : z0 + shape[0], y0 : y0 + shape[1], x0 : x0 + shape[2]].astype(np.float64)
    affine = img.affine @ np.array([[1, 0, 0, x0], [0, 1, 0, y0], [0, 0, 1, z0], [0, 0, 0, 1.0]])
    vh.write_dicom_series(folder, crop, affine, intercept=0.0, name_order=ORDER[: shape[0]])
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.Modality = "MR"
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            del ds[keyword]
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.MagneticFieldStrength = 10, 500, 3
        ds.save_as(path)
    return crop, affine


def _edit(path, change):
    """Rewrite the object at ``path`` after ``change(ds, frames)`` (frames: its stored pixels ``(F, R, C)``), which returns the new frames."""
    ds = pydicom.dcmread(path)
    frames = change(ds, ds.pixel_array.copy())
    ds.NumberOfFrames = frames.shape[0]
    ds.PixelData = np.ascontiguousarray(frames).astype(frames.dtype).tobytes()
    ds.save_as(path)
    return path


def _stacked(ds, frames, copies, mark):
    """``copies`` copies of every frame, copy ``k``'s per-frame groups changed by ``mark(groups, k)``."""
    groups = []
    for k in range(copies):
        for item in ds.PerFrameFunctionalGroupsSequence:
            item = copy.deepcopy(item)
            mark(item, k)
            groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    return np.concatenate([frames] * copies)


def _item(**attributes):
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


# --- the same images, read either way ---------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["oblique", "LPS", "gantry tilt"])
@pytest.mark.parametrize("given", ["folder", "file"])
def test_enhanced_ct_reads_as_its_single_frame_series(vh, tmp_path, geometry, given):
    affine = {"oblique": vh.oblique_affine(), "LPS": vh.axis_affine("LPS", (0.7, 0.8, 2.5)), "gantry tilt": _tilted(vh)}[geometry]
    hu, series, path = _ct(vh, tmp_path, affine)
    single = read_volume(series)
    enhanced = read_volume(path.parent if given == "folder" else path)
    np.testing.assert_allclose(enhanced.affine, single.affine, rtol=0, atol=1e-6)
    np.testing.assert_allclose(enhanced.affine, affine, rtol=0, atol=1e-6)  # the grid the series was written on
    np.testing.assert_array_equal(enhanced.data, single.data)
    np.testing.assert_array_equal(enhanced.data, hu)  # HU: RescaleIntercept -2048 of the functional groups applied
    assert enhanced.header == single.header and enhanced.modality == "CT"
    source = enhanced.dicom
    assert source.series_uid == str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    assert set(source.files) == {path} and len(set(source.sop_instance_uids)) == 1
    # frame k of the object is the slice that single-frame file's ImagePositionPatient puts at z
    converted = pydicom.dcmread(path, stop_before_pixels=True)
    positions = [np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, float) for g in converted.PerFrameFunctionalGroupsSequence]
    for z, number in enumerate(source.frame_numbers):
        np.testing.assert_allclose(positions[number - 1], (LPS @ affine @ [0, 0, z, 1])[:3], atol=1e-6)


def test_highdicom_places_the_enhanced_volume_where_segpipe_does(vh, tmp_path):
    """An independent reading: highdicom's own volume of the object, on the same grid (it may stack the
    frames in the other sense of the normal: flipped back here) with the same rescaled values."""
    _, _, path = _ct(vh, tmp_path, vh.oblique_affine((0.7, 0.8, 2.5)))
    ours = read_volume(path)
    theirs = hd.imread(str(path)).get_volume()  # (slices, rows, columns), affine to LPS
    if np.dot(theirs.affine[:3, 0], (LPS @ ours.affine)[:3, 2]) < 0:
        theirs = theirs.flip_spatial(0)
    np.testing.assert_allclose(theirs.affine[:, [2, 1, 0, 3]], LPS @ ours.affine, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(theirs.array.astype(np.float32), ours.data)


def test_enhanced_mr_reads_as_its_single_frame_series(vh, tmp_path):
    crop, affine = _mr_series(vh, tmp_path / "mr")
    path = _enhanced(tmp_path / "mr", tmp_path / "enhanced" / "mr.dcm")
    single, enhanced = read_volume(tmp_path / "mr"), read_volume(path)
    # LAS rows and columns: the slice normal row x column points Inferior, and slices are stacked along it
    assert enhanced.modality == "MR" and enhanced.orientation == single.orientation == "LAI"
    np.testing.assert_allclose(enhanced.affine, single.affine, rtol=0, atol=1e-6)
    flip_z = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, crop.shape[0] - 1], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(enhanced.affine, affine @ flip_z, rtol=0, atol=1e-4)  # the NIfTI's grid (decimal strings)
    np.testing.assert_array_equal(enhanced.data, crop[::-1])


def test_frames_stored_in_a_shuffled_order_are_sorted_along_the_normal(vh, tmp_path):
    hu, _, path = _ct(vh, tmp_path)
    before = read_volume(path)
    order = np.random.default_rng(7).permutation(6)
    assert not np.array_equal(order, np.arange(6))

    def shuffle(ds, frames):
        ds.PerFrameFunctionalGroupsSequence = Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in order])
        return frames[order]

    _edit(path, shuffle)
    after = read_volume(path)
    np.testing.assert_array_equal(after.affine, before.affine)
    np.testing.assert_array_equal(after.data, hu)
    assert after.dicom.frame_numbers == tuple(int(np.flatnonzero(order == f - 1)[0]) + 1 for f in before.dicom.frame_numbers)


def test_per_frame_rescale_is_applied_per_frame(vh, tmp_path):
    """PixelValueTransformationSequence per frame (a different intercept and slope on every frame), not the shared one."""
    hu, _, path = _ct(vh, tmp_path, slope=1.0, intercept=-2048.0)
    reference = read_volume(path)
    z_of = {f: z for z, f in enumerate(reference.dicom.frame_numbers)}

    def rescale(ds, frames):
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
        for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            slope, intercept = (1.0, 2.0)[number % 2], -3000.0 + 100 * number
            item.PixelValueTransformationSequence = Sequence([_item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")])
            stored = (hu[z_of[number]] - intercept) / slope
            frames[number - 1] = np.round(stored)  # odd HU at slope 2 round: compared below with what was stored
            hu_stored = frames[number - 1].astype(np.float64) * slope + intercept
            expected[z_of[number]] = hu_stored
        return frames

    expected = np.empty_like(hu)
    _edit(path, rescale)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, expected.astype(np.float32))
    assert np.abs(volume.data - hu).max() <= 1.0  # HU, within the slope-2 frames' rounding


def test_enhanced_labels_equal_the_single_frame_labels(vh, tmp_path, pv_model):
    """Same labels NIfTI (array, affine, qform/sform), statistics, and a valid SEG referencing the object's frames."""
    _, series, path = _ct(vh, tmp_path)
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    single = segment_volume(series, spec, tmp_path / "out-single", CPU, model=pv_model)
    enhanced = segment_volume(path, spec, tmp_path / "out-enhanced", CPU, model=pv_model)
    assert enhanced.outputs.labels.name == "ct.labels.nii.gz"  # the file's name without .dcm
    a, b = nib.load(enhanced.outputs.labels), nib.load(single.outputs.labels)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)
    for coded in ("get_qform", "get_sform"):
        np.testing.assert_array_equal(getattr(a.header, coded)(coded=True)[0], getattr(b.header, coded)(coded=True)[0])
    assert [s.volume_ml for s in enhanced.stats.labels] == [s.volume_ml for s in single.stats.labels]
    assert enhanced.dicom_seg
    _check_seg(enhanced.outputs.seg, path, np.asarray(a.dataobj).T)


def _check_seg(seg_path, source_path, labels_zyx):
    seg = pydicom.dcmread(seg_path)
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == [source.SOPInstanceUID]
    positions = {n: np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, float) for n, g in enumerate(source.PerFrameFunctionalGroupsSequence, 1)}
    iop = np.asarray(source.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    z_of = {n: z for z, n in enumerate(sorted(positions, key=lambda n: normal @ positions[n]))}
    seen = set()
    for frame, group in zip(seg.pixel_array.reshape(-1, *labels_zyx.shape[1:]), seg.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        number = int(ref.ReferencedFrameNumber)
        np.testing.assert_allclose(np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float), positions[number], atol=1e-6)
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)  # segment k = class id k here
        np.testing.assert_array_equal(frame.astype(bool), labels_zyx[z_of[number]] == segment)
        seen.add((z_of[number], segment))
    assert seen == {(z, k) for z in range(labels_zyx.shape[0]) for k in (1, 2) if (labels_zyx[z] == k).any()}
    if shutil.which("dciodvfy"):
        run = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True, errors="replace", timeout=60)
        assert [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")] == []


# --- objects that are not one regular 3D grid -------------------------------------------------------------


@pytest.mark.parametrize(
    "dimension, mark, shown",
    [
        ("echoes", lambda g, k: setattr(g, "MREchoSequence", Sequence([_item(EffectiveEchoTime=[4.6, 9.2][k])])), "2 echoes (EffectiveEchoTime (ms) 4.6, 9.2)"),
        (
            "temporal positions",
            lambda g, k: setattr(g.FrameContentSequence[0], "TemporalPositionIndex", k + 1),
            "2 temporal positions (TemporalPositionIndex 1, 2)",
        ),
        (
            "b-values",
            lambda g, k: setattr(g, "MRDiffusionSequence", Sequence([_item(DiffusionBValue=[0, 1000][k], DiffusionDirectionality="ISOTROPIC")])),
            "2 b-values (DiffusionBValue (s/mm2) 0, 1000)",
        ),
    ],
)
def test_several_images_per_position_are_refused_naming_the_dimension(vh, tmp_path, dimension, mark, shown):
    _mr_series(vh, tmp_path / "mr")
    path = _edit(_enhanced(tmp_path / "mr", tmp_path / "enhanced" / "mr.dcm"), lambda ds, frames: _stacked(ds, frames, 2, mark))
    with pytest.raises(InputError) as caught:
        read_volume(path.parent)
    error = caught.value
    assert error.path == str(path)
    assert error.problem == f"multi-frame DICOM object with 12 frames at 6 positions (up to 2 images per position): not one 3D volume, it holds {shown}"
    assert "dcm2niix" in error.fix and "--volume-index" in error.fix


def test_duplicated_frame_positions_name_the_two_frames(vh, tmp_path):
    _, _, path = _ct(vh, tmp_path)

    def duplicate(ds, frames):
        groups = ds.PerFrameFunctionalGroupsSequence
        groups[4].PlanePositionSequence[0].ImagePositionPatient = groups[1].PlanePositionSequence[0].ImagePositionPatient
        return frames

    _edit(path, duplicate)
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert caught.value.path == str(path)  # the file given
    assert re.fullmatch(r"two slices at the same position -?[\d.]+ mm along the normal: ct.dcm frame [25] and ct.dcm frame [25]", caught.value.problem)
    assert "keep one slice per position" in caught.value.fix


def test_unevenly_spaced_and_missing_frames_are_refused(vh, tmp_path):
    _, _, path = _ct(vh, tmp_path, vh.axis_affine("LPS", (0.7, 0.8, 2.5)))
    z_of = {f: z for z, f in enumerate(read_volume(path).dicom.frame_numbers)}
    third = next(f for f, z in z_of.items() if z == 3)

    def shift(ds, frames):
        position = ds.PerFrameFunctionalGroupsSequence[third - 1].PlanePositionSequence[0]
        position.ImagePositionPatient = [*position.ImagePositionPatient[:2], float(position.ImagePositionPatient[2]) + 0.8]
        return frames

    _edit(path, shift)
    with pytest.raises(InputError, match=rf"uneven slice spacing between slice 2 \(ct.dcm frame \d, .*\) and slice 3 \(ct.dcm frame {third},"):
        read_volume(path)

    def drop(ds, frames):  # the frame z=3 (shifted above) left out: a gap of two steps
        keep = [i for i in range(frames.shape[0]) if i != third - 1]
        ds.PerFrameFunctionalGroupsSequence = Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in keep])
        return frames[keep]

    _edit(path, drop)
    with pytest.raises(InputError, match=r"1 missing slice\(s\) between slice 2 \(ct.dcm frame \d.*re-export or re-transfer"):
        read_volume(path)


@pytest.mark.parametrize("missing", ["a frame's position", "per-frame groups", "all functional groups"])
def test_missing_functional_groups_are_refused(vh, tmp_path, missing):
    _, _, path = _ct(vh, tmp_path)

    def remove(ds, frames):
        if missing == "a frame's position":
            del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
        else:
            del ds.PerFrameFunctionalGroupsSequence
            if missing == "all functional groups":
                del ds.SharedFunctionalGroupsSequence
        return frames

    _edit(path, remove)
    with pytest.raises(InputError) as caught:
        read_volume(path.parent)
    error = caught.value
    assert error.path == str(path) and "dcm2niix" in error.fix
    expected = {
        "a frame's position": (
            "multi-frame DICOM frame 3 of 6 has no PlanePositionSequence > ImagePositionPatient in its Per-Frame or Shared Functional Groups"
        ),
        "per-frame groups": "multi-frame DICOM object with 6 frames but no Per-Frame Functional Groups Sequence",
        "all functional groups": "multi-frame DICOM object (6 frames, Legacy Converted Enhanced CT Image Storage) without functional groups",
    }[missing]
    assert error.problem.startswith(expected)


def test_enhanced_object_mixed_with_its_single_frame_slices_is_refused(vh, tmp_path):
    hu = vh.ct_crop((6, 20, 24)).astype(np.float64)
    series = vh.write_dicom_series(tmp_path / "CT", hu, vh.oblique_affine(), series_uid="1.2.826.0.1.3680043.9.7.1")
    path = _enhanced(series, tmp_path / "enhanced.dcm", series_uid="1.2.826.0.1.3680043.9.7.1")
    shutil.move(path, series / "enhanced.dcm")
    with pytest.raises(InputError) as caught:
        read_volume(series)
    assert caught.value.path == str(series / "enhanced.dcm")
    assert caught.value.problem == (
        "series 1.2.826.0.1.3680043.9.7.1 mixes a multi-frame (enhanced) object (enhanced.dcm, 6 frames) "
        "with 6 single-frame file(s) (IM0000.dcm, IM0001.dcm, IM0002.dcm, ...)"
    )
    assert "move the single-frame files" in caught.value.fix


def test_a_single_frame_file_alone_is_still_refused(vh, tmp_path):
    series = vh.write_dicom_series(tmp_path / "CT", vh.ct_crop((3, 20, 24)).astype(np.float64), np.eye(4))
    with pytest.raises(InputError, match=r"a single DICOM file, not a series \(pass the series folder instead"):
        read_volume(series / "IM0001.dcm")


def test_batch_reports_the_bad_enhanced_object_and_finishes_the_others(vh, tmp_path, pv_model):
    hu, series, good = _ct(vh, tmp_path)
    def two_phases(ds, frames):
        return _stacked(ds, frames, 2, lambda g, k: setattr(g.FrameContentSequence[0], "TemporalPositionIndex", k + 1))

    bad = _edit(shutil.copy(good, tmp_path / "bad.dcm"), two_phases)
    folder = tmp_path / "in-a-folder"
    shutil.copytree(good.parent, folder)
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    out = tmp_path / "out"
    report = segment_volumes([good, bad, folder, series], spec, out, CPU, model=pv_model)
    assert [r.study for r in report.results] == ["ct", "in-a-folder", "single"]
    assert [f.source for f in report.failures] == [str(bad)]
    assert "2 temporal positions (TemporalPositionIndex 1, 2)" in report.failures[0].message
    assert not list(out.glob("bad.*"))
    labels = [np.asarray(nib.load(r.outputs.labels).dataobj) for r in report.results]
    assert all(np.array_equal(a, labels[-1]) for a in labels)
    assert np.array_equal(labels[0].T, vh.per_voxel_answer(hu))


def test_pixel_padding_of_an_enhanced_object_is_nodata_as_in_its_series(vh, tmp_path):
    hu, series, _ = _ct(vh, tmp_path)
    padded = -1024.0  # stored 1024 with RescaleIntercept -2048
    hu[:, :3, :] = padded
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:3, :] = 1024
        ds.PixelData = pixels.tobytes()
        ds.add_new(0x00280120, "US", 1024)  # PixelPaddingValue
        ds.save_as(path)
    path = _enhanced(series, tmp_path / "padded" / "ct.dcm")
    if "PixelPaddingValue" not in pydicom.dcmread(path, stop_before_pixels=True):  # where the converter leaves it out
        _edit(path, lambda ds, frames: (ds.add_new(0x00280120, "US", 1024), frames)[1])
    single, enhanced = read_volume(series), read_volume(path)
    assert enhanced.nodata is not None and enhanced.nodata_count == 6 * 3 * 24
    np.testing.assert_array_equal(enhanced.nodata, single.nodata)
    np.testing.assert_array_equal(enhanced.data, single.data)


def test_compressed_enhanced_object_decodes_frame_by_frame(vh, tmp_path):
    pytest.importorskip("openjpeg")
    from pydicom.uid import JPEG2000Lossless

    hu, _, path = _ct(vh, tmp_path, shape=(4, 32, 32))
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(read_volume(path).data, hu)


def test_truncated_enhanced_pixel_data_says_truncated(vh, tmp_path):
    _, _, path = _ct(vh, tmp_path)
    path.write_bytes(path.read_bytes()[:-100])  # pixel data is the last element
    with pytest.raises(InputError) as caught:
        read_volume(path)
    expected = 6 * 20 * 24 * 2
    assert caught.value.path == str(path) and caught.value.problem == f"pixel data truncated ({expected - 100} of {expected} bytes): the file is incomplete"


def test_volume_index_with_an_enhanced_file_is_refused(vh, tmp_path, pv_model):
    _, _, path = _ct(vh, tmp_path)
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    with pytest.raises(InputError) as caught:
        segment_volume(path, spec, tmp_path / "out", VolumeOptions(device="cpu", volume_index=0), model=pv_model)
    assert caught.value.path == str(path)
    assert caught.value.problem == "--volume-index 0 given but this is not a NIfTI file (--volume-index applies to 4D NIfTI files)"


@pytest.mark.parametrize("concatenation", [False, True], ids=["two objects", "a concatenation"])
def test_several_enhanced_objects_in_one_series_are_refused(vh, tmp_path, concatenation):
    hu = vh.ct_crop((6, 20, 24)).astype(np.float64)
    series = vh.write_dicom_series(tmp_path / "CT", hu, vh.oblique_affine())
    folder = tmp_path / "enhanced"
    for name in ("a.dcm", "b.dcm"):
        path = _enhanced(series, folder / name, series_uid="1.2.826.0.1.3680043.9.7.2")
        if concatenation:
            _edit(path, lambda ds, frames: (setattr(ds, "ConcatenationUID", "1.2.826.0.1.3680043.9.7.3"), frames)[1])
    with pytest.raises(InputError) as caught:
        read_volume(folder)
    assert caught.value.path == str(folder)
    if concatenation:
        assert caught.value.problem == (
            "series 1.2.826.0.1.3680043.9.7.2 is one enhanced object split into 2 files (a concatenation: a.dcm, b.dcm), which segpipe does not join"
        )
        assert "dcm2niix" in caught.value.fix
    else:
        assert caught.value.problem == "series 1.2.826.0.1.3680043.9.7.2 holds 2 multi-frame (enhanced) objects (a.dcm, b.dcm)"
        assert "give each file by itself" in caught.value.fix


def test_itk_reads_the_enhanced_object_where_the_labels_lie(vh, tmp_path, pv_model):
    """An independent reader: ITK (GDCM) reads the enhanced file by itself (in stored frame order, so
    another index order than segpipe's); sampled at the labels' voxel centres, as ITK places the labels
    NIfTI, its intensities give exactly the labels (the per-voxel model's answer)."""
    sitk = pytest.importorskip("SimpleITK")
    _, _, path = _ct(vh, tmp_path, vh.oblique_affine((0.7, 0.8, 2.5)))
    result = segment_volume(path, vh.per_voxel_spec(tmp_path, window=[4, 16, 16]), tmp_path / "out", CPU, model=pv_model)
    image = sitk.ReadImage(str(path))
    labels = sitk.ReadImage(str(result.outputs.labels))
    assert image.GetSize() == labels.GetSize()
    sampled = sitk.Resample(image, labels, sitk.Transform(), sitk.sitkNearestNeighbor, -5000.0)
    hu = sitk.GetArrayFromImage(sampled)  # (Z, Y, X) on the labels' grid
    assert hu.min() > -5000  # every labels voxel centre lies on a voxel of the object
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), vh.per_voxel_answer(hu))
