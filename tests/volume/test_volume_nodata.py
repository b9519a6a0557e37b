"""Input nodata becomes output nodata and counts in no label: DICOM pixel padding, NaN in NIfTI.

Real DICOM series (pydicom) and NIfTI files (nibabel) built in tmp_path, segmented by the per-voxel
model of conftest.py, so every voxel's label is known exactly. Arrays are ``(Z, Y, X)``.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from pipeline.errors import InputError
from pipeline.volume.options import VolumeOptions
from pipeline.volume.readers import read_volume
from pipeline.volume.run import segment_volume

CPU = VolumeOptions(device="cpu")
SHAPE = (6, 24, 28)
ROW_MM, COL_MM, SLICE_MM = 0.7, 0.8, 2.5
PAD = (0x0028, 0x0120)  # PixelPaddingValue
LIMIT = (0x0028, 0x0121)  # PixelPaddingRangeLimit


def outside_circle(shape=SHAPE) -> np.ndarray:
    """True outside the ellipse inscribed in each slice (a CT's scan circle), plus two lone voxels inside."""
    _, rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    out = ((yy - (rows - 1) / 2) / (rows / 2)) ** 2 + ((xx - (cols - 1) / 2) / (cols / 2)) ** 2 > 1
    mask = np.broadcast_to(out, shape).copy()
    mask[1, rows // 2, cols // 2] = mask[4, rows // 2 + 3, cols // 2 - 5] = True  # lost if masked on a coarser grid
    return mask


def write_series(folder, stored_zyx, *, signed: bool, intercept: float, tags=(), implicit: bool = False):
    """A CT series, one file per slice, axial, slices 2.5 mm apart along +z; ``stored_zyx`` are the
    stored values; ``tags``: extra ``(tag, VR, value)`` elements on every slice (pixel padding)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    dtype = np.int16 if signed else np.uint16
    assert np.array_equal(stored_zyx, stored_zyx.astype(dtype))
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for z, plane in enumerate(stored_zyx):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        path = folder / f"IM{len(stored_zyx) - z:04d}.dcm"  # named against the slice order
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "CT", "Test^Pad", "PAD1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "20240102", "120000", "", "A1", "1"
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer, ds.SeriesDescription = 1, z + 1, "segpipe-tests", "padded CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-50", "-40", f"{z * SLICE_MM:g}"]
        ds.PixelSpacing = [f"{ROW_MM:g}", f"{COL_MM:g}"]
        ds.SliceThickness = f"{SLICE_MM:g}"
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", f"{intercept:g}", "HU"
        for tag, vr, value in tags:
            ds.add_new(tag, vr, value)
        ds.PixelData = plane.astype(dtype).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return folder


def labels_of(result) -> np.ndarray:
    return np.asarray(nib.load(result.outputs.labels).dataobj).T


def check_statistics(result, hu, expected_ids, nodata_mask, class_ids):
    """stats.json and stats.zarr: per-label figures equal numpy's over the voxels of that label outside
    ``nodata_mask``; the nodata voxels are counted apart."""
    stats = json.loads(result.outputs.stats.read_text())
    affine = nib.load(result.outputs.labels).affine  # float32 in the file: the stats use the input's exact float64
    voxel_ml = stats["voxel_volume_mm3"] / 1000
    assert voxel_ml == pytest.approx(abs(np.linalg.det(affine[:3, :3])) / 1000, rel=1e-6)
    assert stats["nodata_voxel_count"] == int(nodata_mask.sum()) > 0
    assert stats["nodata_volume_ml"] == pytest.approx(nodata_mask.sum() * voxel_ml, rel=1e-12)
    total = 0
    for entry, label_id in zip(stats["labels"], class_ids):
        assert entry["label_id"] == label_id
        mask = (expected_ids == label_id) & ~nodata_mask
        count = int(mask.sum())
        total += entry["voxel_count"]
        assert entry["voxel_count"] == count
        assert entry["volume_ml"] == pytest.approx(count * voxel_ml, rel=1e-12)
        if count == 0:
            continue
        values = np.asarray(hu, dtype=np.float64)[mask]
        for name, value in [("mean", values.mean()), ("std", values.std()), ("min", values.min()), ("max", values.max())]:
            assert entry[f"intensity_{name}"] == pytest.approx(value, rel=1e-9, abs=1e-9), (label_id, name)
        for name, q in [("p5", 5), ("median", 50), ("p95", 95)]:
            assert entry[f"intensity_{name}"] == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-9), (label_id, name)
        centroid = (affine @ np.c_[np.argwhere(mask)[:, ::-1], np.ones(count)].T)[:3].mean(axis=1)
        np.testing.assert_allclose(entry["centroid_ras"], centroid, atol=1e-4)
    assert total + stats["nodata_voxel_count"] == hu.size
    ds = xr.open_zarr(result.outputs.stats.parent / "stats.zarr").load()
    row = ds.sel(study=result.study)
    assert int(row.nodata_voxel_count) == int(nodata_mask.sum())
    assert float(row.nodata_volume_ml) == pytest.approx(nodata_mask.sum() * voxel_ml, rel=1e-12)
    assert ds.nodata_volume_ml.attrs["units"] == "mL"
    assert int(row.voxel_count.sum()) + int(nodata_mask.sum()) == hu.size


def padded_hu(vh):
    """Real CT (HU) with -2000 (the usual padding) outside the scan circle, and that mask."""
    hu = vh.ct_crop(SHAPE).astype(np.int16)
    assert hu.min() > -2000
    mask = outside_circle()
    hu[mask] = -2000
    return hu, mask


def test_dicom_pixel_padding_is_nodata(vh, tmp_path, pv_model):
    """Signed pixels, PixelPaddingValue -2000 (SS): exactly those voxels are 255 and count in no label."""
    hu, mask = padded_hu(vh)
    folder = write_series(tmp_path / "ct_pad", hu, signed=True, intercept=0, tags=[(PAD, "SS", -2000)])
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    result = segment_volume(folder, spec, tmp_path / "out", CPU, model=pv_model)
    labels = labels_of(result)
    expected = np.where(mask, 255, vh.per_voxel_answer(hu))
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
    check_statistics(result, hu, vh.per_voxel_answer(hu), mask, (0, 1, 2))
    sidecar = json.loads(result.outputs.sidecar.read_text())
    assert sidecar["nodata"] == 255 and "255" not in sidecar["labels"]
    itksnap = [line.split() for line in result.outputs.itksnap.read_text().splitlines() if not line.startswith("#")]
    assert itksnap[-1] == ["255", "0", "0", "0", "0", "0", "0", '"nodata"'] and len(itksnap) == 4
    assert result.outputs.slicer.read_text().splitlines()[-1] == "255 nodata 0 0 0 0"


@pytest.mark.parametrize(("value", "limit"), [(-2000, -1500), (-1500, -2000)])
def test_dicom_padding_range_limit(vh, tmp_path, pv_model, value, limit):
    """PixelPaddingRangeLimit: every stored value between it and PixelPaddingValue (inclusive, either order) is nodata;
    one step outside the range is not."""
    hu = vh.ct_crop(SHAPE).astype(np.int16)
    assert hu.min() > -1500
    mask = outside_circle()
    rng = np.random.default_rng(0)
    hu[mask] = rng.integers(-2000, -1499, size=int(mask.sum()))
    hu[mask & (rng.random(SHAPE) < 0.2)] = -1500  # both ends of the range present
    hu[mask & (rng.random(SHAPE) < 0.2)] = -2000
    hu[0, 0, 0], mask[0, 0, 0] = -1499, False  # just inside the data: a real (if odd) voxel
    folder = write_series(tmp_path / "ct_range", hu, signed=True, intercept=0, tags=[(PAD, "SS", value), (LIMIT, "SS", limit)])
    result = segment_volume(folder, vh.per_voxel_spec(tmp_path, window=[4, 16, 16]), tmp_path / "out", CPU, model=pv_model)
    assert np.array_equal(labels_of(result), np.where(mask, 255, vh.per_voxel_answer(hu)))
    check_statistics(result, hu, vh.per_voxel_answer(hu), mask, (0, 1, 2))


def test_dicom_seg_has_no_segment_at_padding(vh, tmp_path, pv_model):
    """Unsigned pixels padded with a stored value the model calls 'dense' (4095 = 2047 HU): no segment there."""
    import highdicom as hd
    import pydicom

    hu = vh.ct_crop(SHAPE).astype(np.int32)
    mask = outside_circle()
    stored = hu + 2048
    assert not (stored == 4095).any()
    stored[mask] = 4095
    folder = write_series(tmp_path / "ct_seg", stored, signed=False, intercept=-2048, tags=[(PAD, "US", 4095)])
    result = segment_volume(folder, vh.per_voxel_spec(tmp_path, window=[4, 16, 16]), tmp_path / "out", CPU, model=pv_model)
    answer = vh.per_voxel_answer(stored - 2048)
    assert np.all(answer[mask] == 2)  # without the mask they would be segment 'dense'
    assert np.array_equal(labels_of(result), np.where(mask, 255, answer))
    seg = hd.seg.segread(result.outputs.seg)
    source = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in source], combine_segments=True, relabel=False)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["soft", "dense"]
    assert not pixels[mask].any()
    assert np.array_equal(pixels[~mask], answer[~mask])  # segment numbers 1, 2 = class ids 1, 2


def test_dicom_padding_bit_pattern_implicit_vr_and_absent_tag(vh, tmp_path):
    """Implicit VR (pydicom resolves 'US or SS' from PixelRepresentation); a value written as SS on
    unsigned pixels matches its bit pattern; without the tag there is no mask."""
    hu, mask = padded_hu(vh)
    implicit = write_series(tmp_path / "implicit", hu, signed=True, intercept=0, tags=[(PAD, "SS", -2000)], implicit=True)
    volume = read_volume(implicit)
    assert np.array_equal(volume.nodata, mask) and volume.nodata_count == int(mask.sum())
    assert not volume.nodata.flags.writeable
    assert volume.data[mask].min() == volume.data[mask].max() == hu[~mask].min()  # the model sees the darkest real voxel there
    assert np.array_equal(volume.data[~mask], hu[~mask].astype(np.float32))
    pattern = write_series(tmp_path / "pattern", hu.astype(np.int32) & 0xFFFF, signed=False, intercept=0, tags=[(PAD, "SS", -2000)])
    assert np.array_equal(read_volume(pattern).nodata, mask)  # stored 63536 = int16 -2000
    plain = write_series(tmp_path / "plain", hu, signed=True, intercept=0)
    assert read_volume(plain).nodata is None
    assert read_volume(plain).data.min() == -2000  # no tag: -2000 is just a value


def test_all_padding_or_all_nan_is_refused(vh, tmp_path):
    folder = write_series(tmp_path / "empty", np.full((3, 8, 8), -2000, np.int16), signed=True, intercept=0, tags=[(PAD, "SS", -2000)])
    with pytest.raises(InputError, match="every voxel is pixel padding") as info:
        read_volume(folder)
    assert str(folder) in str(info.value) and info.value.fix
    path = vh.write_nifti(tmp_path / "nan.nii.gz", np.full((3, 8, 8), np.nan, np.float32), np.eye(4))
    with pytest.raises(InputError, match="every voxel is NaN"):
        read_volume(path)


def nan_ct(vh, tmp_path, name="nan.nii.gz", affine=None):
    hu = vh.ct_crop(SHAPE).astype(np.float32)
    mask = outside_circle()
    data = np.where(mask, np.float32(np.nan), hu)
    path = vh.write_nifti(tmp_path / name, data, vh.axis_affine("RAS") if affine is None else affine)
    return path, hu, mask


@pytest.mark.parametrize(
    ("nodata", "ids", "dtype"),
    [(255, (0, 1, 2), np.uint8), (0, (1, 2, 3), np.uint8), (300, (0, 1, 2), np.uint16)],
)
def test_nifti_nan_is_nodata(vh, tmp_path, pv_model, nodata, ids, dtype):
    """NaN voxels get the spec's nodata (0 next to class ids 1..3; 300 makes the labels uint16)."""
    path, hu, mask = nan_ct(vh, tmp_path)
    classes = [{"id": i, "name": n} for i, n in zip(ids, ("background", "soft", "dense"))]
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16], classes=classes, nodata=nodata)
    result = segment_volume(path, spec, tmp_path / "out", CPU, model=pv_model)
    out = nib.load(result.outputs.labels)
    assert out.get_data_dtype() == dtype
    answer = np.asarray(ids)[vh.per_voxel_answer(hu)]
    assert np.array_equal(labels_of(result), np.where(mask, nodata, answer))
    check_statistics(result, hu, answer, mask, ids)
    assert json.loads(result.outputs.sidecar.read_text())["nodata"] == nodata
    assert f"{nodata} nodata 0 0 0 0" in result.outputs.slicer.read_text().splitlines()


def test_resampled_model_grid_keeps_nodata_exact_on_the_native_grid(vh, tmp_path, pv_model):
    """spec.spacing and orientation: the model runs on a coarser, reoriented grid, the mask is applied
    after the labels come back, so it is exact (lone NaN voxels included) and nowhere else."""
    path, hu, mask = nan_ct(vh, tmp_path, affine=vh.axis_affine("LPS", (0.8, 0.7, 2.5)))
    spec = vh.per_voxel_spec(tmp_path, spacing=[5.0, 1.4, 1.6], orientation="RAS", window=[4, 16, 16])
    result = segment_volume(path, spec, tmp_path / "out", CPU, model=pv_model)
    labels = labels_of(result)
    assert np.array_equal(labels == 255, mask)
    # the model saw the smallest real value at the NaN voxels: the same image without NaN gives the same labels elsewhere
    filled = vh.write_nifti(tmp_path / "filled.nii.gz", np.where(mask, hu[~mask].min(), hu), vh.axis_affine("LPS", (0.8, 0.7, 2.5)))
    plain = labels_of(segment_volume(filled, spec, tmp_path / "out", CPU, model=pv_model))
    assert not (plain == 255).any() and np.array_equal(labels[~mask], plain[~mask])
    answer = vh.per_voxel_answer(hu)
    assert (labels[~mask] == answer[~mask]).mean() >= 0.85  # interpolated logits at half the resolution: edges move
    stats = json.loads(result.outputs.stats.read_text())
    assert stats["nodata_voxel_count"] == int(mask.sum())
    assert [e["voxel_count"] for e in stats["labels"]] == [int((labels == k).sum()) for k in (0, 1, 2)]


def test_zscore_statistics_leave_nodata_out():
    from models.spec import Normalize
    from pipeline.volume.preprocess import intensity_for

    rng = np.random.default_rng(1)
    data = rng.normal(300.0, 40.0, size=SHAPE).astype(np.float32)
    mask = outside_circle()
    data[mask] = -5000.0  # would dominate the mean and std
    spec = type("Spec", (), {"normalize": Normalize(kind="zscore")})()
    got = intensity_for(spec, data, nodata=mask)(data[None])[0]
    valid = data[~mask].astype(np.float64)
    np.testing.assert_allclose(got[~mask], (valid - valid.mean()) / valid.std(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nodata", [255, 65535, 0])
@pytest.mark.parametrize("path", ["one pass", "per label"])
def test_label_statistics_skip_the_nodata_value(monkeypatch, nodata, path):
    """Both statistics paths leave voxels labelled nodata out; a nodata of 65535 does not widen the one-pass counters."""
    import pipeline.volume.stats as stats_module

    if path == "per label":
        monkeypatch.setattr(stats_module, "_all_labels_in_one_pass", lambda *a: None)
    else:
        def no_fallback(*args):  # the one-pass path must take it, not give up
            result = one_pass(*args)
            assert result is not None
            return result

        one_pass = stats_module._all_labels_in_one_pass
        monkeypatch.setattr(stats_module, "_all_labels_in_one_pass", no_fallback)
    rng = np.random.default_rng(nodata)
    ids = (1, 2, 3) if nodata == 0 else (0, 1, 2)
    labels = np.asarray(ids, dtype=np.uint16)[rng.integers(0, 3, size=SHAPE)]
    mask = outside_circle()
    labels[mask] = nodata
    image = rng.integers(-1024, 2000, size=SHAPE).astype(np.float32)
    image[mask] = -3024
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    classes = [(i, f"c{i}") for i in ids]
    for stat, (label_id, _) in zip(stats_module.label_statistics(labels, image, affine, classes, nodata=nodata), classes):
        voxels = labels == label_id
        values = image[voxels].astype(np.float64)
        assert stat.voxel_count == int(voxels.sum())
        assert (stat.intensity_min, stat.intensity_max) == (values.min(), values.max())
        assert stat.intensity_mean == pytest.approx(values.mean(), rel=1e-12)
        assert stat.intensity_p5 == pytest.approx(np.percentile(values, 5), rel=1e-6)
        assert stat.n_components == stats_module.count_components(voxels)
        where = np.argwhere(voxels)
        assert (stat.bbox_min, stat.bbox_max) == (tuple(where.min(axis=0)), tuple(where.max(axis=0)))


def test_older_store_without_nodata_still_merges(tmp_path):
    """A stats.zarr written before nodata was recorded takes new rows; its own rows read -1 / NaN (not recorded)."""
    from pipeline import stats_store
    from pipeline.volume.stats import study_statistics
    from pipeline.volume.stats_zarr import merge_into_store, stats_dataset

    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    classes = [(0, "background"), (1, "liver")]
    old = study_statistics("old", labels, image, np.eye(4), classes, model="m")
    store = tmp_path / "stats.zarr"
    stats_store.replace_store(stats_dataset([old]).drop_vars(["nodata_voxel_count", "nodata_volume_ml"]), store)
    assert "nodata_voxel_count" not in xr.open_zarr(store)
    labels[0] = 255
    new = study_statistics("new", labels, image, np.eye(4), classes, model="m", nodata=255)
    assert (new.nodata_voxel_count, new.nodata_volume_ml) == (20, 0.02)
    assert new.label("background").voxel_count == 60 - 20 - 6
    merge_into_store(new, store)
    ds = xr.open_zarr(store).load()
    assert ds.nodata_voxel_count.dtype == np.int64
    assert ds.nodata_voxel_count.sel(study="new").item() == 20 and ds.nodata_voxel_count.sel(study="old").item() == -1
    assert ds.nodata_volume_ml.sel(study="new").item() == pytest.approx(0.02) and math.isnan(ds.nodata_volume_ml.sel(study="old").item())
    assert ds.voxel_count.sel(study="new", label="background").item() == 34


def test_windows_over_nan_only_are_left_out_and_change_no_valid_label(vh, tmp_path):
    """Slabs of NaN (a volume padded to a fixed extent): windows there are not run, and every voxel
    with data gets exactly the label of the same volume with the fill value in place of NaN, where
    every window runs. A 3x3x3 convolution: labels near the NaN depend on the windows around them."""
    import torch

    shape = (16, 40, 48)
    hu = vh.ct_crop(shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[:7] = True  # 7 padded slices: whole windows [4, 16, 16] of nothing
    mask[:, :, :17] = True
    mask[2, 20, 30] = False  # one voxel with data inside the padding
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1).eval()
    spec = vh.per_voxel_spec(tmp_path, window=[4, 16, 16])
    nan = vh.write_nifti(tmp_path / "nan.nii.gz", np.where(mask, np.float32(np.nan), hu), vh.axis_affine("RAS"))
    filled = vh.write_nifti(tmp_path / "filled.nii.gz", np.where(mask, hu[~mask].min(), hu), vh.axis_affine("RAS"))
    result = segment_volume(nan, spec, tmp_path / "out", CPU, model=net)
    plain = segment_volume(filled, spec, tmp_path / "out", CPU, model=net)
    assert result.engine.windows_run < 0.75 * plain.engine.windows_run
    labels = labels_of(result)
    assert np.array_equal(labels == 255, mask)
    assert np.array_equal(labels[~mask], labels_of(plain)[~mask])
