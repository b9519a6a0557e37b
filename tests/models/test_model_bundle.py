"""``monai-bundle``: a tiny MONAI bundle built in tmp_path loads offline with its weights."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

from models.checkpoint import load_model, save_state_dict
from models.registry import build_network
from pipeline.errors import CheckpointError, ModelSpecError

NETWORK_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 2,
    "in_channels": "@num_channels",
    "out_channels": "@num_classes",
    "channels": [8, 16],
    "strides": [2],
    "num_res_units": 0,
}


def _bundle(root, fmt="json", weights=True):
    """A bundle folder: configs/inference.{json,yaml} with network_def, models/model.pt; returns the reference net."""
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {"num_channels": 2, "num_classes": 3, "network_def": NETWORK_DEF, "network": "$@network_def.to('cpu')"}
    text = json.dumps(config) if fmt == "json" else yaml.safe_dump(config)
    (root / "configs" / f"inference.{fmt}").write_text(text)
    torch.manual_seed(7)
    reference = UNet(spatial_dims=2, in_channels=2, out_channels=3, channels=(8, 16), strides=(2,), num_res_units=0).eval()
    if weights:
        torch.save(reference.state_dict(), root / "models" / "model.pt")
    return reference


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_bundle_loads_network_and_weights(tmp_path, spec_factory, caplog, fmt):
    reference = _bundle(tmp_path / "bundle", fmt)
    spec = spec_factory("monai-bundle", params={"bundle": "bundle"}, source=tmp_path / "spec.yaml")
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        model = load_model(spec)
    assert "random" not in caplog.text  # the bundle's weights count as the checkpoint
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        assert tuple(model(x).shape) == (1, 3, 32, 32)


def test_spec_checkpoint_overrides_bundle_weights(tmp_path, spec_factory):
    _bundle(tmp_path / "bundle")
    torch.manual_seed(3)
    other = build_network(spec_factory("monai-bundle", params={"bundle": str(tmp_path / "bundle"), "weights": None}))
    path = save_state_dict(other, tmp_path / "other.safetensors")
    spec = spec_factory("monai-bundle", params={"bundle": str(tmp_path / "bundle")}, checkpoint=str(path))
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_model(spec)(x), other.eval()(x))


def test_bundle_errors_name_the_problem(tmp_path, spec_factory):
    with pytest.raises(ModelSpecError, match="needs params.bundle"):
        build_network(spec_factory("monai-bundle"))
    with pytest.raises(ModelSpecError, match="MONAI bundle folder not found"):
        build_network(spec_factory("monai-bundle", params={"bundle": str(tmp_path / "absent")}))
    _bundle(tmp_path / "b", weights=False)
    with pytest.raises(ModelSpecError, match=r"no 'net' in the bundle config \(top-level keys: .*network_def"):
        build_network(spec_factory("monai-bundle", params={"bundle": str(tmp_path / "b"), "network_key": "net"}))
    with pytest.raises(CheckpointError, match=r"b/models/model\.pt: checkpoint file not found"):
        build_network(spec_factory("monai-bundle", params={"bundle": str(tmp_path / "b")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match=r"no bundle config found \(looked for configs/inference.json"):
        build_network(spec_factory("monai-bundle", params={"bundle": str(tmp_path / "empty")}))


def test_bundle_weights_that_do_not_fit_name_the_layer(tmp_path, spec_factory):
    """Bundle weights that do not fit its network are caught, naming the layer."""
    _bundle(tmp_path / "bundle", weights=False)
    torch.save({"model.0.conv.weight": torch.zeros(1)}, tmp_path / "bundle" / "models" / "model.pt")
    spec = spec_factory("monai-bundle", params={"bundle": str(tmp_path / "bundle")})
    with pytest.raises(CheckpointError, match=r"layer 'model\.0\.conv\.weight' has shape \(1,\)"):
        build_network(spec)
