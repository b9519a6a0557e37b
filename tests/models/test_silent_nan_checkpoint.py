"""A checkpoint holding NaN weights (saved by a training run whose loss diverged) is refused when the
model loads, naming the file and the layers. It was not: every logit came out NaN, the argmax took
the NaN channel, and a scene was segmented as one class throughout, its statistics recorded as done.
``segpipe train`` no longer saves such weights either (:func:`save_state_dict`). The faults are real
files (safetensors and a plain torch state_dict) written with NaN or inf in them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from safetensors.torch import save_file

from models.checkpoint import load_model, save_state_dict
from models.spec import load_spec
from pipeline.errors import CheckpointError
from pipeline.raster.run import segment_raster


def _spec(folder, checkpoint: str):
    spec = folder / "pp.yaml"
    spec.write_text(json.dumps({
        "name": "pp", "task": "raster", "architecture": "torch.nn:Conv2d", "params": {"in_channels": 3, "out_channels": 3, "kernel_size": 1},
        "in_channels": 3, "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}],
        "window": [32, 32], "overlap": 0.25, "normalize": {"kind": "none"}, "checkpoint": checkpoint,
    }), encoding="utf-8")
    return spec


def _diverged_state() -> dict[str, torch.Tensor]:
    state = torch.nn.Conv2d(3, 3, 1).state_dict()
    state["bias"][2] = float("nan")  # one class's logit NaN everywhere
    return state


def test_a_scene_with_a_nan_checkpoint_fails_before_any_output(tmp_path):
    save_file(_diverged_state(), str(tmp_path / "pp.safetensors"))
    spec = _spec(tmp_path, "pp.safetensors")
    scene = tmp_path / "s.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
        dst.write(np.random.default_rng(0).integers(1, 200, (3, 64, 64), dtype=np.uint8))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as caught:
        segment_raster(scene, spec, out, device="cpu")
    assert caught.value.path == str(tmp_path / "pp.safetensors")
    assert "NaN" in caught.value.problem and "'bias'" in caught.value.problem
    assert not (out / "s.labels.tif").exists() and not (out / "stats.zarr").exists()


def test_a_torch_state_dict_with_infinite_weights_is_refused(tmp_path):
    state = torch.nn.Conv2d(3, 3, 1).state_dict()
    state["weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "pp.pt")
    with pytest.raises(CheckpointError, match="'weight'"):
        load_model(load_spec(_spec(tmp_path, "pp.pt")))


def test_weights_that_are_no_longer_numbers_are_not_saved(tmp_path):
    network = torch.nn.Conv2d(3, 3, 1)
    network.load_state_dict(_diverged_state())
    with pytest.raises(CheckpointError, match="NaN"):
        save_state_dict(network, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
