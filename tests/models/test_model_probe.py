"""load_model probes the network once: logits must be a tensor (N, n_classes, *window) for the spec's task."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from models.checkpoint import load_model
from models.spec import load_spec
from pipeline.errors import ModelSpecError

CLASSES3 = [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}]

HELPERS = '''
import torch

CALLS = []


class Recorder(torch.nn.Module):
    def __init__(self, in_ch=4, n_out=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_ch, n_out, 1)

    def forward(self, x):
        CALLS.append((tuple(x.shape), torch.is_grad_enabled(), self.training))
        return self.conv(x)


class DictOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return {"logits": self.conv(x)}


class TupleOut(DictOut):
    def forward(self, x):
        return (self.conv(x),)
'''


@pytest.fixture
def spec_dir(tmp_path, monkeypatch):
    """A folder holding the spec YAMLs and a module of test networks (found next to the spec)."""
    name = f"probe_nets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HELPERS))
    yield tmp_path, name
    sys.modules.pop(name, None)


def write_spec(folder: Path, architecture: str, params: dict, *, task="raster", window=(64, 64), classes=CLASSES3, in_channels=4, **extra) -> Path:
    raw = {
        "name": "probe", "task": task, "architecture": architecture, "params": params, "in_channels": in_channels,
        "classes": classes, "window": list(window), **extra,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def refused(path: Path, *fragments: str) -> str:
    spec = load_spec(path)
    with pytest.raises(ModelSpecError) as err:
        load_model(spec)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("out_channels", [5, 2])
def test_output_channels_must_match_the_classes(tmp_path, out_channels):
    path = write_spec(tmp_path, "torch.nn:Conv2d", {"in_channels": 4, "out_channels": out_channels, "kernel_size": 1})
    refused(path, f"returns {out_channels} channels but the spec lists 3 classes", "list one class per output channel")


def test_sparse_class_ids_with_too_many_channels(tmp_path):
    """ids 0, 5, 200 and 5 channels used to end in an IndexError per scene."""
    classes = [{"id": 0, "name": "a"}, {"id": 5, "name": "b"}, {"id": 200, "name": "c"}]
    path = write_spec(tmp_path, "torch.nn:Conv2d", {"in_channels": 4, "out_channels": 5, "kernel_size": 1}, classes=classes)
    refused(path, "returns 5 channels but the spec lists 3 classes")


def test_a_strided_output_is_refused(tmp_path):
    path = write_spec(tmp_path, "torch.nn:Conv2d", {"in_channels": 4, "out_channels": 3, "kernel_size": 2, "stride": 2})
    refused(path, "returned logits (1, 3, 32, 32) for input (1, 4, 64, 64), expected (1, 3, 64, 64)", "upsample to the window")


def test_a_2d_network_for_a_volume_spec_is_refused(tmp_path):
    path = write_spec(tmp_path, "torch.nn:Conv2d", {"in_channels": 1, "out_channels": 3, "kernel_size": 1}, task="volume", window=(8, 16, 16), in_channels=1)
    refused(path, "failed on a test window of shape (1, 1, 8, 16, 16)", "task 'volume' needs a 3D")


def test_a_3d_network_for_a_raster_spec_is_refused(tmp_path):
    path = write_spec(tmp_path, "torch.nn:Conv3d", {"in_channels": 4, "out_channels": 3, "kernel_size": 1})
    refused(path, "failed on a test window of shape (1, 4, 64, 64)", "task 'raster' needs a 2D")


@pytest.mark.parametrize(("cls", "what"), [("DictOut", "a dict with keys ['logits']"), ("TupleOut", "a tuple")])
def test_non_tensor_outputs_are_refused(spec_dir, cls, what):
    folder, module = spec_dir
    path = write_spec(folder, f"{module}:{cls}", {})
    refused(path, f"returned {what}, not a tensor of logits", "make forward() return the logits tensor")


def test_the_probe_is_one_window_batch_1_without_gradients_in_eval_mode(spec_dir):
    folder, module = spec_dir
    path = write_spec(folder, f"{module}:Recorder", {"in_ch": 4, "n_out": 3}, window=(48, 40))
    model = load_model(load_spec(path))
    calls = sys.modules[module].CALLS
    assert calls == [((1, 4, 48, 40), False, False)]
    assert not model.training


def test_a_fitting_network_with_a_checkpoint_loads(tmp_path):
    conv = torch.nn.Conv3d(1, 3, 1)
    save_file({k: v.contiguous() for k, v in conv.state_dict().items()}, str(tmp_path / "w.safetensors"))
    path = write_spec(
        tmp_path, "torch.nn:Conv3d", {"in_channels": 1, "out_channels": 3, "kernel_size": 1}, task="volume", window=(8, 16, 16),
        in_channels=1, checkpoint="w.safetensors",
    )
    model = load_model(load_spec(path))
    assert torch.equal(model.weight, conv.weight)


def test_a_window_too_large_for_memory_is_a_spec_error_not_a_traceback(tmp_path):
    """A 64 GB probe window ended in RuntimeError "DefaultCPUAllocator: can't allocate" with a traceback."""
    path = write_spec(tmp_path, "torch.nn:Conv2d", {"in_channels": 256, "out_channels": 3, "kernel_size": 1}, window=(8192, 8192), in_channels=256)
    refused(path, "a test window of shape (1, 256, 8192, 8192) needs more memory than cpu has", "use a smaller window")
