"""``segpipe volume``: real spec YAML + checkpoint, outputs, failures table, exit codes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
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
