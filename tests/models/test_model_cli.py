"""``segpipe models`` and ``segpipe train`` through the real CLI entry point."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml

from models.checkpoint import load_model
from models.spec import load_spec
from pipeline.cli import main

SPEC = {
    "name": "tiny-pixels",
    "task": "raster",
    "architecture": "torch.nn:Conv2d",
    "params": {"in_channels": 2, "out_channels": 2, "kernel_size": 1},
    "in_channels": 2,
    "classes": [{"id": 0, "name": "land"}, {"id": 1, "name": "water"}],
    "window": [16, 16],
}


def test_models_lists_the_shipped_catalog(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("landcover-unet", "landcover-deeplab", "landcover-segformer", "ct-organs-unet"):
        assert name in out
    row = next(line for line in out.splitlines() if "ct-organs-unet" in line)
    for cell in ("volume", "unet", "7: background, body, lungs, liver, ...", "64x64x64"):
        assert cell in row
    row = next(line for line in out.splitlines() if "landcover-segformer" in line)
    for cell in ("raster", "segformer", "5: water, forest, fields, urban, ...", "256x256"):
        assert cell in row


def test_models_survives_missing_checkpoints_and_bad_specs(tmp_path, monkeypatch, capsys):
    (tmp_path / "aaa-tiny.yaml").write_text(yaml.safe_dump({**SPEC, "name": "aaa-tiny", "checkpoint": "nowhere.safetensors"}))
    (tmp_path / "aab-broken.yaml").write_text(yaml.safe_dump({**SPEC, "window": [16, 16, 16]}))
    monkeypatch.setenv("SEGPIPE_CATALOGS", str(tmp_path))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tiny = next(line for line in lines if "aaa-tiny" in line)
    assert "missing" in tiny and "2: land, water" in tiny and "16x16" in tiny
    broken = next(line for line in lines if "aab-broken" in line)
    assert "invalid" in broken
    assert "[16, 16, 16]" in "\n".join(lines)  # brackets in messages survive rich markup


def _write_pair(folder, i):
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(i)
    label = (rng.random((24, 40)) > 0.5).astype(np.uint8)
    image = np.stack([label * 200 + rng.integers(0, 30, label.shape), rng.integers(0, 255, label.shape)]).astype(np.uint8)
    profile = {"driver": "GTiff", "height": 24, "width": 40, "crs": "EPSG:4326", "transform": from_origin(10, 50, 0.001, 0.001)}
    with rasterio.open(folder / f"scene{i}.tif", "w", count=2, dtype="uint8", **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / f"scene{i}_labels.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(label, 1)
    return folder / f"scene{i}.tif", folder / f"scene{i}_labels.tif"


def test_train_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, "normalize": {"kind": "scale", "factor": 0.01}}))
    pairs = [_write_pair(tmp_path, i) for i in range(3)]
    out = tmp_path / "weights" / "tiny.safetensors"
    argv = ["train", str(spec_path), "--images", *[str(p[0]) for p in pairs], "--labels", *[str(p[1]) for p in pairs]]
    argv += ["--out", str(out), "--epochs", "2", "--steps", "3", "--batch", "2", "--lr", "0.05", "--seed", "1", "--val-fraction", "0.34", "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "epoch 2/2" in text and "validation mean Dice" in text
    assert f"wrote {out}" in text and "2 training / 1 validation pairs" in text
    spec = load_spec(spec_path)
    model = load_model(replace(spec, checkpoint=out))
    assert tuple(model.weight.shape) == (2, 2, 1, 1)


def test_train_command_reports_user_errors(tmp_path, capsys):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    image, label = _write_pair(tmp_path, 0)
    rc = main(["train", str(spec_path), "--images", str(image), str(image), "--labels", str(label), "--out", str(tmp_path / "w.safetensors")])
    assert rc == 2
    assert "segpipe train: error: --labels: 2 images but 1 labels" in capsys.readouterr().err
    rc = main(["train", str(spec_path), "--images", str(tmp_path / "absent.tif"), "--labels", str(label), "--out", str(tmp_path / "w.safetensors")])
    assert rc == 2
    assert "absent.tif: cannot read raster" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["models", "--help"], ["train", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0


def test_verbose_flag_works_before_and_after_the_command(capsys):
    from pipeline.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-v", "models"]).verbose is True
    assert parser.parse_args(["models", "-v"]).verbose is True
    assert parser.parse_args(["models"]).verbose is False
    assert parser.parse_args(["raster", "x.tif", "--model", "m", "--out", "o", "--verbose"]).verbose is True


@pytest.mark.parametrize("device", ["cuda:1", "cpu", "auto"])
def test_train_accepts_every_device_name(device):
    from pipeline.cli import build_parser

    assert build_parser().parse_args(["train", "s", "--images", "i", "--labels", "l", "--out", "o", "--device", device]).device == device


def test_models_help_describes_the_listing(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--help"])
    assert "whether their weights are present" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [("--epochs", "0", "argument --epochs: 0 is not >= 1"), ("--batch", "-1", "argument --batch: -1 is not >= 1"),
     ("--steps", "two", "argument --steps: 'two' is not a whole number"), ("--lr", "0", "argument --lr: 0.0 is not > 0"),
     ("--val-fraction", "1", "argument --val-fraction: 1.0 is not in [0, 1)")],
)
def test_train_options_out_of_range_name_the_option(tmp_path, capsys, option, value, problem):
    """``--epochs 0`` printed the internal ``TrainConfig(...)`` object instead of naming the option."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", "demo-landcover", "--images", "a.tif", "--labels", "b.tif", "--out", str(tmp_path / "w.safetensors"), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and "TrainConfig" not in err
