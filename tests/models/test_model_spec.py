"""Spec validation: every mistake names the spec and says how to fix it."""

from __future__ import annotations

import pytest
import yaml

from models.spec import load_spec, spec_from_dict
from pipeline.errors import CheckpointError, ModelSpecError

BASE = {
    "task": "raster",
    "architecture": "unet",
    "in_channels": 3,
    "window": [32, 32],
    "classes": [{"id": 0, "name": "water"}, {"id": 1, "name": "forest"}],
}


def test_unknown_architecture_lists_known_ones():
    from models.registry import build_network

    spec = spec_from_dict({**BASE, "architecture": "resnet-segmenter"})
    with pytest.raises(ModelSpecError) as err:
        build_network(spec)
    message = str(err.value)
    assert "unknown architecture 'resnet-segmenter'" in message
    for name in ("deeplabv3plus", "monai-bundle", "segformer", "segresnet", "swinunetr", "unet", "package.module:callable"):
        assert name in message


@pytest.mark.parametrize(("task", "window"), [("raster", [32, 32, 32]), ("volume", [32, 32]), ("raster", [32, 0])])
def test_window_rank_must_match_task(task, window):
    with pytest.raises(ModelSpecError, match=r"window .* does not fit task"):
        spec_from_dict({**BASE, "task": task, "window": window})


def test_duplicate_class_ids_are_named():
    classes = [{"id": 0, "name": "a"}, {"id": 3, "name": "b"}, {"id": 3, "name": "c"}]
    with pytest.raises(ModelSpecError, match=r"class ids are not unique: \[3\]"):
        spec_from_dict({**BASE, "classes": classes})


def test_meanstd_must_match_channels():
    with pytest.raises(ModelSpecError, match="2 means and 2 stds for 3 channels"):
        spec_from_dict({**BASE, "normalize": {"kind": "meanstd", "mean": [0, 0], "std": [1, 1]}})
    spec = spec_from_dict({**BASE, "normalize": {"kind": "meanstd", "mean": [5], "std": [2]}})
    assert spec.normalize.mean == (5.0,)


def test_missing_checkpoint_names_the_path_it_looked_for(tmp_path):
    from models.checkpoint import load_model

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "checkpoint": "weights/absent.safetensors"}))
    spec = load_spec(path)
    assert spec.checkpoint == tmp_path / "weights" / "absent.safetensors"
    with pytest.raises(CheckpointError) as err:
        load_model(spec)
    assert str(tmp_path / "weights" / "absent.safetensors") in str(err.value)
    assert "not found" in str(err.value) and "segpipe train" in str(err.value)


def test_unknown_param_lists_known_params():
    from models.registry import build_network

    with pytest.raises(ModelSpecError, match=r"unknown params \['chanels'\].*known params: .*channels"):
        build_network(spec_from_dict({**BASE, "params": {"chanels": [8, 16]}}))


@pytest.mark.parametrize("name", ["landcover-unet", "landcover-deeplab", "landcover-segformer", "ct-organs-unet"])
def test_catalog_entries_load_and_build(name):
    """Every shipped entry is valid and its network maps a window to (1, K, *window) logits."""
    import torch

    from models.registry import build_network

    spec = load_spec(name)
    assert spec.name == name
    assert spec.checkpoint is not None and spec.checkpoint.suffix == ".safetensors"
    network = build_network(spec).eval()
    with torch.no_grad():
        out = network(torch.zeros(1, spec.in_channels, *spec.window))
    assert tuple(out.shape) == (1, spec.n_classes, *spec.window)
