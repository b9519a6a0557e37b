"""Checkpoints: round trips give identical outputs; unsafe, missing or mismatched files fail clearly."""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import apply_state_dict, load_model, load_state_dict_file, save_state_dict
from models.registry import build_network
from pipeline.errors import CheckpointError

SMALL_UNET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


class _RunsShell:
    """Pickles to a call of os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def unet_spec(spec_factory):
    return spec_factory("unet", "raster", [32, 32], params=SMALL_UNET)


@pytest.fixture
def trained(unet_spec):
    """A network with non-default weights (and BatchNorm-free buffers) plus a test input."""
    torch.manual_seed(1)
    network = build_network(unet_spec).eval()
    return network, torch.randn(2, 2, 32, 32)


def test_safetensors_round_trip_gives_identical_outputs(tmp_path, unet_spec, trained):
    network, x = trained
    path = save_state_dict(network, tmp_path / "w.safetensors", metadata={"spec": "t"})
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left behind
    torch.manual_seed(99)  # a different random init, overwritten by the checkpoint
    model = load_model(replace(unet_spec, checkpoint=path))
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), network(x))


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "lightning+module"])
def test_weights_only_torch_files_round_trip(tmp_path, unet_spec, trained, layout):
    network, x = trained
    state = network.state_dict()
    payload = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {"lr": 0.1}},
        "lightning+module": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "global_step": 10},
    }[layout]
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    model = load_model(replace(unet_spec, checkpoint=path))
    with torch.no_grad():
        assert torch.equal(model(x), network(x))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_code_carrying_pickle_is_refused_without_running_it(tmp_path, trained, how):
    network, _ = trained
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": network.state_dict(), "hook": _RunsShell(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        load_state_dict_file(path)
    assert not marker.exists(), "the pickle's code ran"
    message = str(err.value)
    assert str(path) in message and "refused to load" in message and "safetensors" in message


def test_shape_mismatch_names_layer_and_both_shapes(tmp_path, spec_factory, trained):
    network, _ = trained
    path = save_state_dict(network, tmp_path / "w.safetensors")
    five_classes = spec_factory("unet", "raster", [32, 32], n_classes=5, params=SMALL_UNET, checkpoint=str(path))
    with pytest.raises(CheckpointError) as err:
        load_model(five_classes)
    message = str(err.value)
    assert str(path) in message
    # MONAI's UNet: the last up-convolution (ConvTranspose, weight (in, out, k, k)) emits the classes
    assert "layer 'model.2.0.conv.weight' has shape (16, 3, 3, 3) in the checkpoint but (16, 5, 3, 3) in the model" in message


def test_shape_mismatch_exact_message(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 1))
    state = {"0.weight": torch.zeros(3, 2, 1, 1), "0.bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"w\.pt: layer '0\.weight' has shape \(3, 2, 1, 1\) in the checkpoint but \(3, 4, 1, 1\) in the model"):
        apply_state_dict(net, state, source=tmp_path / "w.pt")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    net = torch.nn.Sequential(*[torch.nn.Conv2d(2, 2, 1) for _ in range(4)])
    state = {k.replace("0.", "9.", 1) if k.startswith("0.") else k: v for k, v in net.state_dict().items()}
    state.update({f"extra{i}.weight": torch.zeros(1) for i in range(7)})
    with pytest.raises(CheckpointError) as err:
        apply_state_dict(net, state, source="w.safetensors")
    message = str(err.value)
    assert "2 model keys missing from the checkpoint: 0.weight, 0.bias" in message
    assert "9 unexpected keys: 9.weight, 9.bias, extra0.weight, extra1.weight, extra2.weight, ... (+4 more)" in message


def test_unreadable_and_unknown_files(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_state_dict_file(bad)
    onnx = tmp_path / "w.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '\.onnx'.*\.safetensors, \.pt, \.pth, \.ckpt, \.bin"):
        load_state_dict_file(onnx)
    whole = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), whole)
    with pytest.raises(CheckpointError, match="holds Tensor, not a state_dict"):
        load_state_dict_file(whole)


def test_safetensors_file_written_elsewhere_loads(tmp_path, unet_spec, trained):
    network, x = trained
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    with torch.no_grad():
        assert torch.equal(load_model(replace(unet_spec, checkpoint=path))(x), network(x))


def test_no_checkpoint_means_random_init_with_warning(unet_spec, caplog):
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        model = load_model(unet_spec)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert "has no checkpoint: using randomly initialised weights" in caplog.text


def test_save_refuses_other_formats(tmp_path, trained):
    with pytest.raises(CheckpointError, match="written as safetensors"):
        save_state_dict(trained[0], tmp_path / "w.pt")
