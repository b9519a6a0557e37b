"""segment_volume / segment_volumes end to end: exact per-voxel answers, exact output geometry, batches with bad studies."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import xarray as xr

from pipeline.errors import InputError
from pipeline.volume.batch import segment_volumes
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import StudyOutputs, segment_volume

CPU = VolumeOptions(device="cpu")


def assert_same_grid(out_path, in_path):
    """Output NIfTI has exactly the input's shape, affine, qform/sform matrices and codes."""
    out, ref = nib.load(out_path), nib.load(in_path)
    assert out.shape == ref.shape[:3]
    np.testing.assert_array_equal(out.affine, ref.affine)
    for coded in ("get_qform", "get_sform"):
        (m_out, c_out), (m_ref, c_ref) = getattr(out.header, coded)(coded=True), getattr(ref.header, coded)(coded=True)
        assert int(c_out) == int(c_ref)
        if m_ref is not None:
            np.testing.assert_allclose(m_out, m_ref, atol=1e-5)


GEOMETRIES = ["RAS", "LAS", "LPS", "oblique"]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_per_voxel_model_gives_the_per_voxel_answer(vh, tmp_path, pv_model, geometry):
    hu = vh.ct_crop((12, 40, 48))
    affine = vh.oblique_affine() if geometry == "oblique" else vh.axis_affine(geometry)
    path = vh.write_nifti(tmp_path / f"ct_{geometry}.nii.gz", hu, affine, qcode=1, scode=2 if geometry != "oblique" else 1)
    spec = vh.per_voxel_spec(tmp_path, orientation="RAS", window=[8, 16, 16])  # reorients LAS/LPS/oblique
    result = segment_volume(path, spec, tmp_path / "out", VolumeOptions(device="cpu", block=(8, 16, 32)), model=pv_model)
    out = nib.load(result.outputs.labels)
    assert out.get_data_dtype() == np.uint8
    assert_same_grid(result.outputs.labels, path)
    assert np.array_equal(np.asarray(out.dataobj).T, vh.per_voxel_answer(hu))
    assert result.windows_run > 1 and result.blocks_run > 1
    assert not (tmp_path / "out" / ".segpipe-work").exists()  # intermediates removed once done


def test_mr_las_zscore_native_orientation(vh, tmp_path):
    path = vh.med_file("mr_brain_t1.nii.gz")
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float64)
    spec = vh.per_voxel_spec(tmp_path, n_classes=2, normalize={"kind": "zscore"}, window=[16, 128, 128])
    model = vh.per_voxel_model((0.0, 1.0), (0.0, -0.50003))
    result = segment_volume(path, spec, tmp_path / "out", CPU, model=model)
    fg = data[data != 0]
    z = (data - fg.mean()) / fg.std()
    expected = (z - 0.50003 > 0).astype(np.uint8)
    got = np.asarray(nib.load(result.outputs.labels).dataobj)
    assert_same_grid(result.outputs.labels, path)
    assert nib.aff2axcodes(nib.load(result.outputs.labels).affine) == ("L", "A", "S")
    assert np.array_equal(got, expected)
    assert result.stats.label("body").voxel_count == int(expected.sum())


@pytest.mark.parametrize(("geometry", "spacing"), [("RAS", (4.0, 2.5, 2.5)), ("LPS", (2.0, 2.0, 3.5))])
def test_resampling_agrees_with_the_per_voxel_answer(vh, tmp_path, geometry, spacing):
    ct = nib.load(vh.med_file("ct_abdomen_small.nii.gz"))
    hu = np.asarray(ct.dataobj).T
    affine = ct.affine if geometry == "RAS" else vh.axis_affine("LPS", (3.0, 3.0, 3.0))
    path = vh.write_nifti(tmp_path / f"ct_{geometry}.nii.gz", hu, affine, qcode=0, scode=2)
    spec = vh.per_voxel_spec(tmp_path, n_classes=2, spacing=list(spacing), orientation="RAS", window=[32, 64, 64])
    model = vh.per_voxel_model(vh.BODY_WEIGHT, vh.BODY_BIAS)
    result = segment_volume(path, spec, tmp_path / "out", CPU, model=model)
    got = np.asarray(nib.load(result.outputs.labels).dataobj).T
    expected = vh.per_voxel_answer(hu, vh.BODY_WEIGHT, vh.BODY_BIAS)
    assert_same_grid(result.outputs.labels, path)
    assert got.shape == hu.shape and (got == expected).mean() >= 0.99


def test_large_class_ids_give_uint16(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    path = vh.write_nifti(tmp_path / "small.nii", hu, vh.axis_affine("RAS"))
    spec = vh.per_voxel_spec(tmp_path, classes=[{"id": 0, "name": "bg"}, {"id": 300, "name": "soft"}, {"id": 1000, "name": "dense"}])
    result = segment_volume(path, spec, tmp_path / "out", CPU, model=pv_model)
    assert result.outputs.labels.name == "small.labels.nii.gz"
    out = nib.load(result.outputs.labels)
    assert out.get_data_dtype() == np.uint16
    assert np.array_equal(np.asarray(out.dataobj).T, np.array([0, 300, 1000])[vh.per_voxel_answer(hu)])


def test_sidecar_and_colour_tables(vh, tmp_path, pv_model):
    path = vh.write_nifti(tmp_path / "c.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("RAS"))
    spec = vh.per_voxel_spec(tmp_path)
    out = segment_volume(path, spec, tmp_path / "out", CPU, model=pv_model).outputs
    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar["labels"]["1"] == {"name": "soft", "color": "#e31a1c"} and sidecar["model"] == spec.name
    rows = [line for line in out.itksnap.read_text().splitlines() if not line.startswith("#")]
    assert rows[1].split() == ["1", "227", "26", "28", "1", "1", "1", '"soft"']
    assert rows[0].split()[4] == "0"  # background transparent
    assert "2 dense 31 120 180 255" in out.slicer.read_text().splitlines()


def test_resume_after_a_crash_reruns_only_unfinished_blocks(vh, tmp_path, pv_model):
    hu = vh.ct_crop((8, 16, 100))  # long x: blocks finished before the crash do not feed later ones
    path = vh.write_nifti(tmp_path / "r.nii.gz", hu, vh.axis_affine("LPS"))
    spec = vh.per_voxel_spec(tmp_path, window=[8, 16, 16])

    class Crashing(torch.nn.Module):
        def __init__(self, after: int):
            super().__init__()
            self.calls, self.after = 0, after

        def forward(self, x):
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("simulated crash")
            return pv_model(x)

    options = VolumeOptions(device="cpu", block=(8, 16, 16))
    with pytest.raises(RuntimeError, match="simulated crash"):
        segment_volume(path, spec, tmp_path / "out", options, model=Crashing(2))
    outputs = StudyOutputs.for_input(path, tmp_path / "out")
    assert outputs.work.exists() and not outputs.labels.exists() and not outputs.stats.exists()
    full = segment_volume(path, spec, tmp_path / "full", options, model=pv_model)
    resumed = segment_volume(path, spec, tmp_path / "out", options, model=pv_model)
    assert resumed.windows_run < full.windows_run and resumed.blocks_run < full.blocks_run
    a = np.asarray(nib.load(resumed.outputs.labels).dataobj)
    assert np.array_equal(a, np.asarray(nib.load(full.outputs.labels).dataobj))
    assert np.array_equal(a.T, vh.per_voxel_answer(hu))


def test_batch_reports_bad_studies_and_finishes_the_rest(vh, tmp_path, pv_model):
    import gzip

    hu = vh.ct_crop((6, 20, 24))
    good = vh.write_nifti(tmp_path / "good.nii.gz", hu, vh.axis_affine("LPS"))
    truncated = vh.write_nifti(tmp_path / "truncated.nii.gz", hu.astype(np.float32) + np.arange(hu.size).reshape(hu.shape), np.eye(4))
    truncated.write_bytes(gzip.compress(gzip.decompress(truncated.read_bytes()))[:-600])
    infs = vh.write_nifti(tmp_path / "infs.nii.gz", np.where(hu > 0, np.inf, hu).astype(np.float32), np.eye(4))  # NaN is nodata, inf refused
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((0, 4, 4), np.float32), np.eye(4)), empty)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 24), np.float32), np.eye(4)), flat)
    affine = vh.oblique_affine((0.7, 0.8, 2.5))
    dicom = vh.write_dicom_series(tmp_path / "dicom_ok", hu, affine)
    gap = vh.write_dicom_series(tmp_path / "dicom_gap", hu, affine, skip=(2,))
    two = tmp_path / "dicom_two"
    vh.write_dicom_series(two / "a", hu, affine, series_uid="1.2.826.0.1.1")
    vh.write_dicom_series(two / "b", hu[:4], affine, series_uid="1.2.826.0.1.2")
    inputs = [truncated, good, infs, empty, gap, flat, dicom, two]
    spec = vh.per_voxel_spec(tmp_path)
    out = tmp_path / "out"
    report = segment_volumes(inputs, spec, out, CPU, model=pv_model)
    assert [r.study for r in report.results] == ["good", "dicom_ok"]
    failures = {f.source: f.message for f in report.failures}
    assert set(failures) == {str(p) for p in (truncated, infs, empty, gap, flat, two)}
    assert "truncated or corrupt" in failures[str(truncated)] or "cannot open" in failures[str(truncated)]
    assert "inf voxel" in failures[str(infs)] and "zero-size" in failures[str(empty)] and "2D image" in failures[str(flat)]
    assert "missing slice" in failures[str(gap)] and "2 series" in failures[str(two)]
    assert all(str(tmp_path) in m for m in failures.values())
    for stem in ("truncated", "infs", "empty", "flat", "dicom_gap", "dicom_two"):
        assert not list(out.glob(f"{stem}.*"))  # nothing half-written that looks complete
    # DICOM input: NIfTI labels on the series grid, and a DICOM SEG referencing the series
    dicom_result = report.results[1]
    assert dicom_result.dicom_seg and dicom_result.outputs.seg.is_file()
    labels = nib.load(dicom_result.outputs.labels)
    np.testing.assert_allclose(labels.affine, affine, atol=1e-6)
    assert np.array_equal(np.asarray(labels.dataobj).T, vh.per_voxel_answer(hu))
    _check_dicom_seg(dicom_result.outputs.seg, dicom, vh.per_voxel_answer(hu))
    ds = xr.open_zarr(out / "stats.zarr").load()
    assert sorted(ds.study.values.tolist()) == ["dicom_ok", "good"]
    assert ds.voxel_count.sel(study="good").sum().item() == hu.size
    assert ds.modality.sel(study="dicom_ok").item() == "CT"
    # a second run skips finished studies; force redoes them
    again = segment_volumes([good, dicom], spec, out, CPU, model=pv_model)
    assert [r.skipped for r in again.results] == [True, True] and again.ok
    forced = segment_volumes([good], spec, out, VolumeOptions(device="cpu", force=True), model=pv_model)
    assert [r.skipped for r in forced.results] == [False]


def _check_dicom_seg(seg_path, series_folder, expected_zyx):
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(seg_path)
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series_folder.iterdir())]
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["soft", "dense"]
    by_position = {float(np.cross(*np.reshape(np.asarray(s.ImageOrientationPatient, float), (2, 3))) @ np.asarray(s.ImagePositionPatient, float)): s for s in source}
    ordered = [by_position[k].SOPInstanceUID for k in sorted(by_position)]
    volume = seg.get_pixels_by_source_instance(ordered, combine_segments=True, relabel=False)
    assert volume.shape == expected_zyx.shape
    assert np.array_equal(volume, expected_zyx)


def test_duplicate_stems_fail_cleanly(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = vh.write_nifti(tmp_path / "a" / "case.nii.gz", hu, np.eye(4))
    second = vh.write_nifti(tmp_path / "b" / "case.nii", hu, np.eye(4))
    report = segment_volumes([first, second], vh.per_voxel_spec(tmp_path), tmp_path / "out", CPU, model=pv_model)
    assert [r.study for r in report.results] == ["case"]
    assert "same output name 'case'" in report.failures[0].message


def test_raster_spec_is_refused(vh, tmp_path):
    spec = vh.per_voxel_spec(tmp_path)
    raster = type(spec)(**{**spec.__dict__, "task": "raster", "window": (32, 32)})
    with pytest.raises(InputError, match="raster model"):
        segment_volumes([], raster, tmp_path / "out")


@pytest.mark.slow
def test_dask_address_runs_studies_on_the_cluster(vh, tmp_path, pv_model):
    from distributed import LocalCluster

    hu = vh.ct_crop((6, 20, 24))
    good = vh.write_nifti(tmp_path / "d1.nii.gz", hu, vh.axis_affine("LAS"))
    bad = tmp_path / "d2.nii.gz"
    bad.write_bytes(b"broken")
    spec = vh.per_voxel_spec(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        report = segment_volumes([good, bad], spec, tmp_path / "out", CPU, model=pv_model, dask_address=cluster.scheduler_address)
    assert [r.study for r in report.results] == ["d1"] and [f.source for f in report.failures] == [str(bad)]
    assert np.array_equal(np.asarray(nib.load(report.results[0].outputs.labels).dataobj).T, vh.per_voxel_answer(hu))


def test_paths_without_a_name_are_named_after_their_folder(tmp_path, monkeypatch):
    from pipeline.volume.run import output_stem

    here = tmp_path / "CT_0001" / "series"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert [output_stem(p) for p in (".", "./", "..", "../", "../series/", "case01.nii.gz", "a/case01.nii")] == [
        "series", "series", "CT_0001", "CT_0001", "series", "case01", "case01",
    ]
    for nameless in ("/", ".nii.gz"):
        with pytest.raises(InputError, match="has no file or folder name to name its outputs after"):
            output_stem(nameless)


def test_series_uid_with_a_nifti_and_volume_index_with_a_dicom_folder_are_refused(vh, tmp_path, pv_model):
    hu = vh.ct_crop((6, 20, 24))
    nifti = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    dicom = vh.write_dicom_series(tmp_path / "dcm", hu, vh.axis_affine("LPS"), series_uid="1.2.826.0.1.1")
    spec = vh.per_voxel_spec(tmp_path)
    out = tmp_path / "out"
    with_series = VolumeOptions(device="cpu", series_uid="1.2.826.0.1.1")
    report = segment_volumes([nifti, dicom], spec, out, with_series, model=pv_model)
    assert [r.study for r in report.results] == ["dcm"]
    assert [f.message for f in report.failures] == [
        (
            f"{nifti}: --series-uid 1.2.826.0.1.1 given but this is a NIfTI file (--series-uid applies to DICOM folders) "
            "(drop --series-uid (series_uid= from Python) for NIfTI inputs, or segment them in a run of their own)"
        )
    ]
    with pytest.raises(InputError) as caught:
        segment_volume(dicom, spec, out, VolumeOptions(device="cpu", volume_index=0), model=pv_model)
    assert str(caught.value) == (
        f"{dicom}: --volume-index 0 given but this is a DICOM folder (--volume-index applies to 4D NIfTI files) "
        "(drop --volume-index (volume_index= from Python) for DICOM inputs, or segment them in a run of their own)"
    )
    assert not list(out.glob("ct.*"))


def test_a_block_larger_than_the_image_is_one_block_of_the_image(vh, tmp_path, pv_model):
    """``--block 4000`` on a 30-slice study asked zarr for a (4000, 4000, 4000) chunk: 59.6 GiB."""
    hu = vh.ct_crop((12, 40, 48))
    path = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("RAS"), qcode=1, scode=1)
    spec = vh.per_voxel_spec(tmp_path, window=[8, 16, 16])
    result = segment_volume(path, spec, tmp_path / "out", VolumeOptions(device="cpu", block=(4000, 4000, 4000)), model=pv_model)
    assert result.blocks_run == 1
    assert np.array_equal(np.asarray(nib.load(result.outputs.labels).dataobj).T, vh.per_voxel_answer(hu))


def test_half_written_outputs_of_a_killed_run_are_removed_by_the_next_run(vh, tmp_path, pv_model):
    """A run killed while writing left ``.tmp-<pid>-ct.labels.nii.gz`` (and the stats JSON's temporary)
    for ever; the next run of that study removes them, and leaves another study's alone."""
    hu = vh.ct_crop((12, 40, 48))
    path = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("RAS"), qcode=1, scode=1)
    out = tmp_path / "out"
    out.mkdir()
    left = [out / ".tmp-4242-ct.labels.nii.gz", out / ".tmp-4242-ct.stats.json", out / ".tmp-77-ct.seg.dcm"]
    others = [out / ".tmp-4242-ct.x.labels.nii.gz", out / ".tmp-mine-ct.labels.nii.gz", out / "notes.tmp-1-ct.stats.json"]
    for f in left + others:
        f.write_bytes(b"\x1f\x8b partial")
    spec = vh.per_voxel_spec(tmp_path, window=[8, 16, 16])
    segment_volume(path, spec, out, CPU, model=pv_model)
    assert not any(f.exists() for f in left)
    assert all(f.exists() for f in others)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-")) == [".tmp-4242-ct.x.labels.nii.gz", ".tmp-mine-ct.labels.nii.gz"]


def test_a_users_own_labels_file_under_the_output_name_is_not_replaced(vh, tmp_path, pv_model):
    """``out/ct.labels.nii.gz`` made by another tool (a reference segmentation) was overwritten
    without a word; segpipe's own label files carry the header description 'segpipe labels'."""
    hu = vh.ct_crop((12, 40, 48))
    path = vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("RAS"), qcode=1, scode=1)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "ct.labels.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((48, 40, 12), np.uint8), np.eye(4)), str(theirs))
    before = theirs.read_bytes()
    spec = vh.per_voxel_spec(tmp_path, window=[8, 16, 16])
    with pytest.raises(InputError, match="exists and was not written by segpipe"):
        segment_volume(path, spec, out, CPU, model=pv_model)
    assert theirs.read_bytes() == before and not (out / "ct.stats.json").exists()
    replaced = segment_volume(path, spec, out, VolumeOptions(device="cpu", force=True), model=pv_model)  # force replaces it
    assert np.array_equal(np.asarray(nib.load(replaced.outputs.labels).dataobj).T, vh.per_voxel_answer(hu))
    (out / "ct.stats.json").unlink()  # ours now, even without its statistics: redone, not refused
    assert not segment_volume(path, spec, out, CPU, model=pv_model).skipped
