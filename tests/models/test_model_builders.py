"""Every builder maps (N, in_channels, *window) to logits (N, n_classes, *window); bad params fail clearly."""

from __future__ import annotations

import re

import pytest
import torch

from models.registry import ARCHITECTURES, build_network
from pipeline.errors import ModelSpecError

SMALL = {
    "unet": {"channels": [8, 16, 32], "strides": [2, 2]},
    "deeplabv3plus": {"widths": [8, 16, 16, 32], "blocks": [1, 1, 1, 1], "aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16},
    "segformer": {"hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 16},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
}

CASES = [
    ("unet", "raster", [32, 48]),
    ("unet", "volume", [16, 24, 32]),
    ("deeplabv3plus", "raster", [40, 56]),  # any size: logits are resized to the window
    ("deeplabv3plus", "volume", [16, 24, 32]),
    ("segformer", "raster", [36, 52]),
    ("segresnet", "volume", [16, 24, 32]),
    ("segresnet", "raster", [32, 48]),
    ("swinunetr", "volume", [32, 32, 64]),
    ("swinunetr", "raster", [64, 64]),
]


@pytest.mark.parametrize(("architecture", "task", "window"), CASES)
def test_builder_returns_window_sized_logits(spec_factory, architecture, task, window):
    spec = spec_factory(architecture, task, window, in_channels=2, n_classes=3, params=SMALL[architecture])
    network = build_network(spec).eval()
    n = 1 if architecture == "swinunetr" else 2  # the slowest on a CPU
    with torch.no_grad():
        out = network(torch.randn(n, 2, *window))
    assert tuple(out.shape) == (n, 3, *window)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_all_builtins_are_registered():
    assert {"unet", "deeplabv3plus", "segformer", "segresnet", "swinunetr", "monai-bundle"} <= set(ARCHITECTURES)


def test_deeplab_output_stride_8_doubles_default_rates(spec_factory):
    spec = spec_factory("deeplabv3plus", params={**SMALL["deeplabv3plus"], "output_stride": 8})
    network = build_network(spec)
    rates = [b[0].dilation[0] for b in network.aspp.branches[1:4]]
    assert rates == [12, 24, 36]
    _, deep = network.encoder(torch.zeros(1, 2, 64, 64))
    assert tuple(deep.shape[2:]) == (8, 8)  # output stride 8 via dilation
    spec16 = spec_factory("deeplabv3plus", params=SMALL["deeplabv3plus"])
    _, deep16 = build_network(spec16).encoder(torch.zeros(1, 2, 64, 64))
    assert tuple(deep16.shape[2:]) == (4, 4)


def test_deeplab_trains_with_batch_of_one(spec_factory):
    """The image-pooling branch has no norm, so a single window per step works in train mode."""
    network = build_network(spec_factory("deeplabv3plus", params=SMALL["deeplabv3plus"])).train()
    network(torch.randn(1, 2, 32, 32)).sum().backward()
    grads = [p.grad for p in network.parameters()]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)  # every weight learns from one window


def test_segformer_refuses_volumes(spec_factory):
    with pytest.raises(ModelSpecError, match="does not support task 'volume'"):
        build_network(spec_factory("segformer", "volume"))


def test_swinunetr_window_must_divide_by_32(spec_factory):
    with pytest.raises(ModelSpecError, match=r"window \[40, 32, 64\] is not divisible by 32.*multiples of 32"):
        build_network(spec_factory("swinunetr", "volume", [40, 32, 64]))
    with pytest.raises(ModelSpecError, match="1-voxel bottleneck"):
        build_network(spec_factory("swinunetr", "volume", [32, 32, 32]))


def test_unet_window_must_divide_by_total_stride(spec_factory):
    with pytest.raises(ModelSpecError, match=r"not divisible by 4 \(product of strides\)"):
        build_network(spec_factory("unet", "raster", [30, 32], params=SMALL["unet"]))


def test_library_argument_errors_become_spec_errors(spec_factory):
    with pytest.raises(ModelSpecError, match="invalid params for architecture 'segresnet'"):
        build_network(spec_factory("segresnet", "volume", params={"init_filters": 6}))


def test_import_path_architecture(spec_factory):
    spec = spec_factory("torch.nn:Conv2d", params={"in_channels": 2, "out_channels": 3, "kernel_size": 1})
    network = build_network(spec)
    assert isinstance(network, torch.nn.Conv2d)
    assert tuple(network(torch.zeros(1, 2, 32, 32)).shape) == (1, 3, 32, 32)


def test_import_path_errors(spec_factory):
    with pytest.raises(ModelSpecError, match="cannot import architecture 'torch.nn:NoSuchLayer'"):
        build_network(spec_factory("torch.nn:NoSuchLayer"))
    with pytest.raises(ModelSpecError, match="returned float, not a torch.nn.Module"):
        build_network(spec_factory("torch.nn.init:calculate_gain", params={"nonlinearity": "relu"}))


@pytest.mark.parametrize(
    ("architecture", "params", "problem"),
    [
        ("os:system", lambda marker: {"command": f"touch {marker}"}, "a builtin_function_or_method, not a class or Python function"),
        ("subprocess:run", lambda marker: {"args": ["touch", str(marker)]}, "a function of Python's standard library (subprocess.run)"),
        ("pathlib:Path.touch", lambda marker: {"self": str(marker)}, "a function of Python's standard library (pathlib.Path.touch)"),
        ("torch:zeros", lambda marker: {"size": [2]}, "a builtin_function_or_method"),
        ("pathlib:Path", lambda marker: {}, "the class pathlib.Path, not a torch.nn.Module"),
    ],
)
def test_a_spec_cannot_call_what_builds_no_network(tmp_path, spec_factory, architecture, params, problem):
    """A spec YAML that ships no code named ``os:system`` with ``params: {command: ...}``: the command ran
    before the 'not a torch.nn.Module' refusal. Now such callables are refused before being called."""
    marker = tmp_path / "ran"
    with pytest.raises(ModelSpecError, match=re.escape(problem)):
        build_network(spec_factory(architecture, params=params(marker)))
    assert not marker.exists()


def test_segformer_local_pretrained_folder(tmp_path, spec_factory):
    """params.pretrained loads a save_pretrained folder offline; new class/channel counts re-initialise the head."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from models.checkpoint import load_model

    torch.manual_seed(0)
    config = SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16, num_channels=2, num_labels=3)
    SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "mit")
    saved = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "mit", local_files_only=True).state_dict()

    spec = spec_factory("segformer", params={"pretrained": "mit"}, source=tmp_path / "spec.yaml", n_classes=4)
    network = load_model(spec)
    state = network.state_dict()
    kept = [k for k in saved if not k.startswith("decode_head.classifier")]
    assert len(kept) > 50
    assert all(torch.equal(state[f"model.{k}"], saved[k]) for k in kept)  # encoder and decoder weights loaded
    assert tuple(state["model.decode_head.classifier.weight"].shape)[0] == 4  # new head for 4 classes
    assert tuple(network(torch.zeros(1, 2, 32, 32)).shape) == (1, 4, 32, 32)

    with pytest.raises(ModelSpecError, match="hub downloads are not supported"):
        build_network(spec_factory("segformer", params={"pretrained": "nvidia/mit-b0"}, source=tmp_path / "spec.yaml"))


def test_a_users_module_named_like_a_standard_library_one_is_not_refused(tmp_path, spec_factory):
    """The standard library is recognised by where a module lives, not only by its name: a ``tabnanny.py``
    next to the spec (a name the standard library also has) builds its network."""
    (tmp_path / "tabnanny.py").write_text("import torch\n\ndef build(channels):\n    return torch.nn.Conv2d(channels, 3, 1)\n")
    spec = spec_factory("tabnanny:build", params={"channels": 2}, source=tmp_path / "spec.yaml")
    assert isinstance(build_network(spec), torch.nn.Conv2d)
