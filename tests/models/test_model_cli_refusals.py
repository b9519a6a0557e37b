"""A model that does not fit its spec, or an unusable checkpoint, exits 2 before any input is read and
leaves no --out folder behind (segpipe raster and segpipe volume)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import from_origin

from pipeline.cli import main

RASTER = {
    "name": "px", "task": "raster", "architecture": "torch.nn:Conv2d",
    "params": {"in_channels": 2, "out_channels": 2, "kernel_size": 1}, "in_channels": 2,
    "classes": [{"id": 0, "name": "land"}, {"id": 1, "name": "water"}], "window": [16, 16],
}
VOLUME = {
    **RASTER, "task": "volume", "architecture": "torch.nn:Conv3d", "window": [8, 8, 8], "in_channels": 1,
    "params": {"in_channels": 1, "out_channels": 2, "kernel_size": 1},
}


def _geotiff(path):
    profile = {"driver": "GTiff", "height": 20, "width": 24, "count": 2, "dtype": "uint8", "crs": "EPSG:32633", "transform": from_origin(5e5, 4e6, 10, 10)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((2, 20, 24), np.uint8))
    return path


def _nifti(path):
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)), path)
    return path


def _bad_specs(tmp_path, base):
    """Three ways to be unusable: output channels vs classes, a pickled whole model, a 2D/3D mix."""
    pickled = tmp_path / "full.pt"
    torch.save(torch.nn.Conv2d(1, 1, 1), pickled)
    out = {**base["params"], "out_channels": 5}
    return {
        "channels": ({**base, "params": out}, "returns 5 channels but the spec lists 2 classes"),
        "pickle": ({**base, "checkpoint": str(pickled)}, "refused to load"),
        "dims": ({**base, "architecture": "torch.nn:Conv3d" if base["task"] == "raster" else "torch.nn:Conv2d"}, "failed on a test window"),
    }


@pytest.mark.parametrize("case", ["channels", "pickle", "dims"])
@pytest.mark.parametrize("command", ["raster", "volume"])
def test_unusable_model_exits_2_and_creates_no_out_folder(tmp_path, capsys, command, case):
    base = RASTER if command == "raster" else VOLUME
    raw, expected = _bad_specs(tmp_path, base)[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    image = _geotiff(tmp_path / "scene.tif") if command == "raster" else _nifti(tmp_path / "ct.nii.gz")
    before = image.stat().st_mtime_ns
    out = tmp_path / "runs" / "night1"
    assert main([command, str(image), "--model", str(spec), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"segpipe {command}: error: " in err and expected in err
    assert not (tmp_path / "runs").exists()
    assert image.stat().st_mtime_ns == before
