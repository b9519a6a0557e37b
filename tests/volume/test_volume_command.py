"""``segpipe volume``: real spec YAML + checkpoint, outputs, failures table, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.cli import main


def _spec_yaml(vh, tmp_path):
    spec = vh.per_voxel_spec(tmp_path)  # writes the safetensors checkpoint next to spec.yaml
    raw = {
        "name": "pv-cli",
        "task": "volume",
        "architecture": "torch.nn:Conv3d",
        "params": {"in_channels": 1, "out_channels": 3, "kernel_size": 1},
        "in_channels": 1,
        "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in spec.classes],
        "window": [8, 16, 16],
        "normalize": {"kind": "window", "min": -1000, "max": 1000},
        "orientation": "RAS",
        "checkpoint": spec.checkpoint.name,
    }
    path = tmp_path / "pv-cli.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_segments_reports_failures_and_exits_nonzero(vh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich folds long paths at the default width of 80
    hu = vh.ct_crop((6, 20, 24))
    good = vh.write_nifti(tmp_path / "good.nii.gz", hu, vh.axis_affine("LPS"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    out = tmp_path / "out"
    code = main(["volume", str(good), str(bad), "--model", str(_spec_yaml(vh, tmp_path)), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 failed" in captured.out and f"{bad}: cannot open as NIfTI" in captured.out
    labels = nib.load(out / "good.labels.nii.gz")
    assert np.array_equal(np.asarray(labels.dataobj).T, vh.per_voxel_answer(hu))
    ds = xr.open_zarr(out / "stats.zarr")
    assert ds.study.values.tolist() == ["good"] and ds.volume_ml.dims == ("study", "label")
    # only the good study: exit 0, and it is skipped the second time
    assert main(["volume", str(good), "--model", str(_spec_yaml(vh, tmp_path)), "--out", str(out), "--device", "cpu"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_cli_bad_arguments_exit_2(vh, tmp_path, capsys):
    good = vh.write_nifti(tmp_path / "g.nii.gz", vh.ct_crop((6, 20, 24)), np.eye(4))
    code = main(["volume", str(good), "--model", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert code == 2 and "missing.yaml" in capsys.readouterr().err
    code = main(["volume", str(good), "--model", str(_spec_yaml(vh, tmp_path)), "--out", str(tmp_path / "o"), "--block", "8", "16"])
    assert code == 2 and "--block" in capsys.readouterr().err


def test_each_failure_is_printed_once(vh, tmp_path):
    """The failures table carries the message; no WARNING log line repeats it (a real process: real logging)."""
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "pipeline.cli", "volume", str(bad), "--model", str(_spec_yaml(vh, tmp_path)), "--out", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert done.returncode == 1, done.stderr
    both = done.stdout + done.stderr
    assert both.count(f"{bad}: cannot open as NIfTI") == 1
    assert "WARNING" not in both and "Traceback" not in both


def test_volume_index_picks_a_volume_of_a_4d_nifti(vh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    first = vh.ct_crop((6, 20, 24))
    second = (first + 400).astype(np.int16)
    path = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([first.T, second.T], axis=-1), vh.axis_affine("RAS")), path)
    spec = str(_spec_yaml(vh, tmp_path))
    out = tmp_path / "out"
    assert main(["volume", str(path), "--model", spec, "--out", str(out), "--device", "cpu"]) == 1
    assert f"{path}: 4D image with 2 volumes (shape (24, 20, 6, 2)) (pick one with --volume-index 0..1" in capsys.readouterr().out
    assert main(["volume", str(path), "--model", spec, "--out", str(out), "--device", "cpu", "--volume-index", "1"]) == 0
    assert np.array_equal(np.asarray(nib.load(out / "dyn.labels.nii.gz").dataobj).T, vh.per_voxel_answer(second))
    capsys.readouterr()
    # another volume of the same file is another input with the same stem: refused, --force replaces it
    assert main(["volume", str(path), "--model", spec, "--out", str(out), "--device", "cpu", "--volume-index", "0"]) == 1
    refused = f"{out}/dyn.*: was made from volume 1 of {path.resolve()}, not from volume 0 (use another --out for each, or --force to replace it)"
    assert refused in capsys.readouterr().out
    assert np.array_equal(np.asarray(nib.load(out / "dyn.labels.nii.gz").dataobj).T, vh.per_voxel_answer(second))
    assert main(["volume", str(path), "--model", spec, "--out", str(out), "--device", "cpu", "--volume-index", "0", "--force"]) == 0
    assert np.array_equal(np.asarray(nib.load(out / "dyn.labels.nii.gz").dataobj).T, vh.per_voxel_answer(first))
    capsys.readouterr()
    assert main(["volume", str(path), "--model", spec, "--out", str(tmp_path / "out2"), "--volume-index", "2"]) == 1
    assert f"{path}: --volume-index 2 out of range for 2 volumes (use --volume-index 0..1)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["volume", str(path), "--model", spec, "--out", str(out), "--volume-index", "-1"])
    assert exit_.value.code == 2 and "is not a volume number" in capsys.readouterr().err


def test_unusable_dask_address_is_an_input_error(vh, tmp_path, capsys):
    good = vh.write_nifti(tmp_path / "g.nii.gz", vh.ct_crop((6, 20, 24)), np.eye(4))
    out = tmp_path / "o"
    code = main(["volume", str(good), "--model", str(_spec_yaml(vh, tmp_path)), "--out", str(out), "--dask-address", "scheduler-without-port"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "segpipe volume: error: scheduler-without-port: not a Dask scheduler address" in err and "tcp://scheduler:8786" in err
    assert not out.exists()


def test_relative_inputs_are_recorded_by_absolute_path(vh, tmp_path, monkeypatch):
    hu = vh.ct_crop((6, 20, 24))
    vh.write_nifti(tmp_path / "ct.nii.gz", hu, vh.axis_affine("LPS"))
    spec = str(_spec_yaml(vh, tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["volume", "ct.nii.gz", "--model", spec, "--out", "out", "--device", "cpu"]) == 0
    source = str(tmp_path.resolve() / "ct.nii.gz")
    assert json.loads((tmp_path / "out" / "ct.stats.json").read_text())["source"] == source
    assert json.loads((tmp_path / "out" / "ct.labels.json").read_text())["source"] == source
    assert xr.open_zarr(tmp_path / "out" / "stats.zarr").source.values.tolist() == [source]


def test_a_study_given_as_dot_is_named_after_its_folder(vh, tmp_path, monkeypatch):
    hu = vh.ct_crop((6, 20, 24))
    folder = vh.write_dicom_series(tmp_path / "CT_0001", hu, vh.axis_affine("LPS"))
    spec = str(_spec_yaml(vh, tmp_path))
    out = tmp_path / "out"
    monkeypatch.chdir(folder)
    assert main(["volume", ".", "--model", spec, "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "CT_0001.labels.ctbl", "CT_0001.labels.json", "CT_0001.labels.nii.gz", "CT_0001.labels.txt",
        "CT_0001.seg.dcm", "CT_0001.stats.json", "stats.zarr",
    ]
    assert np.array_equal(np.asarray(nib.load(out / "CT_0001.labels.nii.gz").dataobj).T, vh.per_voxel_answer(hu))
    assert xr.open_zarr(out / "stats.zarr").study.values.tolist() == ["CT_0001"]
    monkeypatch.chdir(tmp_path)  # the same folder by another path: the same study, done
    assert main(["volume", "CT_0001/", "--model", spec, "--out", str(out), "--device", "cpu"]) == 0


def test_a_different_input_with_the_same_name_fails_and_force_replaces_it(vh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per table row: the message names two long paths
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    hu = vh.ct_crop((6, 20, 24))
    other = (hu + 400).astype(np.int16)
    a = vh.write_nifti(tmp_path / "a" / "case01.nii.gz", hu, vh.axis_affine("LPS"))
    b = vh.write_nifti(tmp_path / "b" / "case01.nii.gz", other, vh.axis_affine("LPS"))
    spec = str(_spec_yaml(vh, tmp_path))
    out = tmp_path / "out"
    assert main(["volume", str(a), "--model", spec, "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["volume", str(b), "--model", spec, "--out", str(out), "--device", "cpu"]) == 1
    printed = capsys.readouterr().out
    assert f"{out}/case01.*: was made from {a}, not {b} (use another --out, rename the input, or --force to replace it)" in printed
    assert "skipped" not in printed
    assert np.array_equal(np.asarray(nib.load(out / "case01.labels.nii.gz").dataobj).T, vh.per_voxel_answer(hu))
    assert main(["volume", str(b), "--model", spec, "--out", str(out), "--device", "cpu", "--force"]) == 0
    assert np.array_equal(np.asarray(nib.load(out / "case01.labels.nii.gz").dataobj).T, vh.per_voxel_answer(other))


def test_series_uid_with_a_nifti_input_is_reported(vh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    study = vh.write_nifti(tmp_path / "ct.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))
    code = main(["volume", str(study), "--model", str(_spec_yaml(vh, tmp_path)), "--out", str(tmp_path / "out"), "--device", "cpu", "--series-uid", "1.2.3"])
    assert code == 1
    assert f"{study}: --series-uid 1.2.3 given but this is a NIfTI file (--series-uid applies to DICOM folders)" in capsys.readouterr().out
