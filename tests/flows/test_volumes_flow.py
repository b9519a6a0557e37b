"""The ``segment-volumes`` flow on tiny real NIfTI studies with a per-voxel model (Conv3d, kernel 1).

The model thresholds intensity: < 100 -> background (0), 100..300 -> soft (1), > 300 -> bone (2),
so every output voxel and every volume is known exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flows import volumes as vflow
from flows.volumes import segment_volumes

pytestmark = pytest.mark.usefixtures("prefect_server")

CLASSES = [(0, "background"), (1, "soft"), (2, "bone")]
# logits: background 0, soft x - 100, bone 2x - 400
WEIGHT = np.array([[0.0], [1.0], [2.0]])
BIAS = np.array([0.0, -100.0, -400.0])
SHAPE = (10, 14, 18)  # (Z, Y, X)


def _affine(spacing=(1.5, 1.0, 2.0), lps=False) -> np.ndarray:
    """Voxel (x, y, z, 1) -> RAS mm, with spacing (x, y, z) and an LPS flip when asked."""
    sx, sy, sz = spacing
    affine = np.diag([sx, sy, sz, 1.0])
    if lps:
        affine[0, 0], affine[1, 1] = -sx, -sy
    affine[:3, 3] = [12.5, -40.0, 7.25]
    return affine


def _write_study(path: Path, seed: int, affine: np.ndarray) -> np.ndarray:
    """A ``(Z, Y, X)`` int16 study with random blobs of the three intensity bands; returns the expected labels."""
    rng = np.random.default_rng(seed)
    values = rng.choice(np.array([0, 40, 150, 250, 400, 900], np.int16), size=SHAPE)
    nib.save(nib.Nifti1Image(values.transpose(2, 1, 0), affine), str(path))
    return np.where(values > 300, 2, np.where(values > 100, 1, 0)).astype(np.uint8)


@pytest.fixture
def batch(tmp_path, pointwise_spec):
    studies = tmp_path / "studies"
    studies.mkdir()
    expected = {
        "ct-a": (_write_study(studies / "ct-a.nii.gz", 1, _affine()), _affine()),
        "ct-b": (_write_study(studies / "ct-b.nii", 2, _affine((0.8, 0.8, 3.0), lps=True)), _affine((0.8, 0.8, 3.0), lps=True)),
    }
    (studies / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    spec = pointwise_spec(tmp_path / "model", task="volume", weight=WEIGHT, bias=BIAS, classes=CLASSES, window=[4, 8, 8])
    return studies, spec, expected


def test_batch_outputs_on_input_grid_failure_reported_and_artifacts(batch, tmp_path, artifacts_of, rows_of):
    studies, spec, expected = batch
    out = tmp_path / "out"
    state = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu", return_state=True)

    assert state.is_completed(), state.message
    report = state.result()
    assert [o.name for o in report.outputs] == ["ct-a", "ct-b"]
    assert not any(o.skipped for o in report.outputs)
    for name, (labels, affine) in expected.items():
        img = nib.load(str(out / f"{name}.labels.nii.gz"))
        assert img.shape == SHAPE[::-1]
        np.testing.assert_allclose(img.affine, affine, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), labels)
    assert (out / "stats.zarr").is_dir()

    assert [f.item for f in report.failures] == [str((studies / "broken.nii.gz").resolve())]
    assert report.failures[0].error == "InputError"
    assert "broken.nii.gz" in report.failures[0].message

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert {"segment-volumes-volumes", "segment-volumes-failures", "segment-volumes-summary"} <= set(artifacts)
    rows = rows_of(artifacts["segment-volumes-volumes"])
    assert len(rows) == 2 * len(CLASSES)
    for name, (labels, affine) in expected.items():
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        for cid, cname in CLASSES:
            row = next(r for r in rows if r["study"] == name and r["label"] == cname)
            assert row["voxel_count"] == int((labels == cid).sum())
            assert row["volume_ml"] == pytest.approx(float((labels == cid).sum()) * voxel_ml, abs=1e-3)
    failures = rows_of(artifacts["segment-volumes-failures"])
    assert [r["item"] for r in failures] == [str((studies / "broken.nii.gz").resolve())]
    summary = artifacts["segment-volumes-summary"].data
    assert str(out / "ct-a.labels.nii.gz") in summary and "broken.nii.gz" in summary


def test_done_studies_are_skipped_unless_forced(batch, tmp_path):
    studies, spec, _ = batch
    (studies / "broken.nii.gz").unlink()
    out = tmp_path / "out"
    first = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu")
    labels = out / "ct-a.labels.nii.gz"
    stamp = labels.stat().st_mtime_ns

    again = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu")
    assert not first.skipped and again.skipped == ("ct-a", "ct-b")
    assert labels.stat().st_mtime_ns == stamp

    forced = segment_volumes(studies=str(studies / "ct-a.nii*"), model=str(spec), out=str(out), device="cpu", force=True)
    assert forced.skipped == () and [o.name for o in forced.outputs] == ["ct-a"]
    assert labels.stat().st_mtime_ns != stamp



def test_skip_checks_what_was_segmented(batch, tmp_path):
    """The flow applies segpipe volume's rule: a changed input is redone, another input of the same name fails."""
    studies, spec, _ = batch
    (studies / "broken.nii.gz").unlink()
    out = tmp_path / "out"
    segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu")
    expected = _write_study(studies / "ct-a.nii.gz", 5, _affine())  # a new export of ct-a
    stamp = (studies / "ct-b.nii").stat().st_mtime_ns
    os.utime(studies / "ct-a.nii.gz", ns=(stamp + 10**9, stamp + 10**9))
    again = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu")
    assert again.skipped == ("ct-b",)
    labels = nib.load(str(out / "ct-a.labels.nii.gz"))
    np.testing.assert_array_equal(np.asarray(labels.dataobj).transpose(2, 1, 0), expected)
    assert json.loads((out / "ct-a.stats.json").read_text())["source"] == str((studies / "ct-a.nii.gz").resolve())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write_study(elsewhere / "ct-a.nii.gz", 6, _affine())
    state = segment_volumes(studies=[str(elsewhere / "ct-a.nii.gz")], model=str(spec), out=str(out), device="cpu", return_state=True)
    assert state.is_failed()
    skipped = segment_volumes(studies=[str(elsewhere / "ct-a.nii.gz"), str(studies / "ct-b.nii")], model=str(spec), out=str(out), device="cpu")
    assert skipped.skipped == ("ct-b",) and [f.error for f in skipped.failures] == ["InputError"]
    assert skipped.failures[0].message == (
        f"{out}/ct-a.*: was made from {(studies / 'ct-a.nii.gz').resolve()}, not {(elsewhere / 'ct-a.nii.gz').resolve()} "
        "(use another out=, rename the input, or force=True to replace it)"  # flow parameters, not CLI options
    )
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "ct-a.labels.nii.gz")).dataobj).transpose(2, 1, 0), expected)

def test_volume_index_picks_the_volume_of_4d_studies(tmp_path, pointwise_spec):
    """volume_index (as --volume-index) reaches every study; without it a 4D study fails with the hint."""
    studies = tmp_path / "studies"
    studies.mkdir()
    first = np.random.default_rng(1).choice(np.array([0, 150, 400], np.int16), size=SHAPE)
    second = np.random.default_rng(2).choice(np.array([0, 150, 400], np.int16), size=SHAPE)
    nib.save(nib.Nifti1Image(np.stack([first.T, second.T], axis=-1), _affine()), str(studies / "dyn.nii.gz"))
    spec = pointwise_spec(tmp_path / "model", task="volume", weight=WEIGHT, bias=BIAS, classes=CLASSES, window=[4, 8, 8])
    out = tmp_path / "out"
    state = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu", return_state=True)
    assert state.is_failed() and not (out / "dyn.labels.nii.gz").exists()
    report = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu", volume_index=1)
    assert not report.failures
    labels = np.asarray(nib.load(str(out / "dyn.labels.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, np.where(second > 300, 2, np.where(second > 100, 1, 0)))
    assert segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu", volume_index=1).skipped == ("dyn",)
    # another volume of the same file is another input with the same name: that study fails, force=True replaces it
    state = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu", volume_index=0, return_state=True)
    assert state.is_failed()
    labels = np.asarray(nib.load(str(out / "dyn.labels.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, np.where(second > 300, 2, np.where(second > 100, 1, 0)))
    (tmp_path / "other").mkdir()
    ct = tmp_path / "other" / "ct3d.nii.gz"
    _write_study(ct, 3, _affine())  # a 3D study: volume_index=0 reads it as it is
    refused = segment_volumes(studies=[str(studies / "dyn.nii.gz"), str(ct)], model=str(spec), out=str(out), device="cpu", volume_index=0)
    assert [f.message for f in refused.failures] == [
        f"{out}/dyn.*: was made from volume 1 of {(studies / 'dyn.nii.gz').resolve()}, not from volume 0 "
        "(use another out= for each, or force=True to replace it)"  # flow parameters, not CLI options
    ]
    redone = segment_volumes(studies=str(studies / "dyn.nii.gz"), model=str(spec), out=str(out), device="cpu", volume_index=0, force=True)
    assert redone.skipped == ()
    labels = np.asarray(nib.load(str(out / "dyn.labels.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, np.where(first > 300, 2, np.where(first > 100, 1, 0)))


def test_all_studies_failing_fails_the_run(tmp_path, pointwise_spec, artifacts_of, rows_of):
    spec = pointwise_spec(tmp_path / "model", task="volume", weight=WEIGHT, bias=BIAS, classes=CLASSES, window=[4, 8, 8])
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    state = segment_volumes(studies=[str(bad)], model=str(spec), out=str(tmp_path / "out"), device="cpu", return_state=True)
    assert state.is_failed()
    failures = rows_of(artifacts_of(state.state_details.flow_run_id)["segment-volumes-failures"])
    assert [r["item"] for r in failures] == [str(bad)]


def test_io_errors_are_retried_and_bad_input_is_not(batch, tmp_path, monkeypatch):
    import pipeline.volume.run as run
    from pipeline.errors import InputError

    studies, spec, _ = batch
    real = run.segment_volume
    calls: list[str] = []

    def flaky(input_path, *args, **kwargs):
        calls.append(Path(input_path).name)
        if Path(input_path).name == "ct-a.nii.gz" and calls.count("ct-a.nii.gz") == 1:
            raise OSError("Connection reset by peer (simulated)")
        if Path(input_path).name == "ct-b.nii":
            raise InputError(input_path, "simulated bad input", "none")
        return real(input_path, *args, **kwargs)

    monkeypatch.setattr(run, "segment_volume", flaky)
    monkeypatch.setattr(vflow, "segment_study", vflow.segment_study.with_options(retry_delay_seconds=0))
    report = segment_volumes(studies=[str(studies / "ct-a.nii.gz"), str(studies / "ct-b.nii")], model=str(spec), out=str(tmp_path / "out"), device="cpu")

    assert calls.count("ct-a.nii.gz") == 2  # one I/O failure, one retry that succeeded
    assert calls.count("ct-b.nii") == 1  # InputError: never retried
    assert [o.name for o in report.outputs] == ["ct-a"]
    assert [(f.error, "simulated bad input" in f.message) for f in report.failures] == [("InputError", True)]


@pytest.mark.parametrize("max_parallel", [1, 3])
def test_max_parallel_bounds_studies_in_flight(batch, tmp_path, monkeypatch, max_parallel):
    import threading
    import time

    import pipeline.volume.run as run

    studies, spec, _ = batch
    (studies / "broken.nii.gz").unlink()
    for name in ("ct-c", "ct-d"):
        _write_study(studies / f"{name}.nii.gz", 7, _affine())
    real = run.segment_volume
    lock, running, peak = threading.Lock(), [0], [0]

    def slow(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.4)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(run, "segment_volume", slow)
    report = segment_volumes(studies=str(studies), model=str(spec), out=str(tmp_path / "out"), device="cpu", max_parallel=max_parallel)
    assert len(report.outputs) == 4 and not report.failures
    assert peak[0] == 1 if max_parallel == 1 else peak[0] > 1


def test_catalog_with_demo_recipe_generates_missing_studies(tmp_path, pointwise_spec):
    pointwise_spec(tmp_path / "model", task="volume", weight=WEIGHT, bias=BIAS, classes=CLASSES, window=[8, 16, 16])
    catalog = tmp_path / "cat" / "studies.yaml"
    catalog.parent.mkdir()
    catalog.write_text(
        "model: ../model/model.yaml\n"
        "studies: ['{output}/demo-inputs/p1.nii.gz']\n"
        "demo: {shape: [16, 32, 32], seed: 3}\n"
    )
    out = tmp_path / "out"
    report = segment_volumes(studies=str(catalog), out=str(out), device="cpu")
    source = nib.load(str(out / "demo-inputs" / "p1.nii.gz"))
    labels = nib.load(str(out / "p1.labels.nii.gz"))
    assert labels.shape == source.shape == (32, 32, 16)
    np.testing.assert_allclose(labels.affine, source.affine)
    assert json.loads((out / "p1.stats.json").read_text())["study"] == "p1"
    assert os.path.samefile(report.outputs[0].study, out / "demo-inputs" / "p1.nii.gz")


def test_default_run_generates_and_segments_the_demo(tmp_path, monkeypatch):
    from models.spec import load_spec

    checkpoint = load_spec("demo-ct").checkpoint
    if checkpoint is None or not checkpoint.is_file():
        pytest.skip("demo-ct checkpoint not shipped yet")
    monkeypatch.setenv("SEGPIPE_OUT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    report = segment_volumes()
    out = tmp_path / "segment-volumes"
    assert Path(report.out_dir) == out and not report.failures
    assert [o.name for o in report.outputs] == ["phantom-001", "phantom-002"]
    for name in ("phantom-001", "phantom-002"):
        labels, source = nib.load(str(out / f"{name}.labels.nii.gz")), nib.load(str(out / "demo-inputs" / f"{name}.nii.gz"))
        assert labels.shape == source.shape
        np.testing.assert_allclose(labels.affine, source.affine)
    assert segment_volumes().skipped == ("phantom-001", "phantom-002")
