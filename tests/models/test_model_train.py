"""Training: small runs on arrays, GeoTIFFs and NIfTI write checkpoints that load_model reads back."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import load_model
from models.train import TrainConfig, TrainProgress, mean_dice, train
from pipeline.errors import CheckpointError, InputError, ModelSpecError

PIXEL_MODEL = {"in_channels": 2, "out_channels": 3, "kernel_size": 1}


def _scene(seed: int, shape=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0/10/20 in blocks; channel 0 encodes the class, channel 1 is noise (values 0..255 like 8-bit)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[:, shape[1] // 2 :] = 10
    label[shape[0] // 3 : 2 * shape[0] // 3, shape[1] // 4 : 3 * shape[1] // 4] = 20
    image = np.stack([label * 10 + rng.integers(0, 20, shape), rng.integers(0, 255, shape)]).astype(np.uint8)
    return image, label


def test_per_pixel_model_learns_and_reloads(tmp_path, spec_factory):
    spec = spec_factory("torch.nn:Conv2d", params=PIXEL_MODEL, normalize={"kind": "meanstd", "mean": [100, 127], "std": [20, 70]})
    events: list[TrainProgress] = []
    out = tmp_path / "ckpt" / "pixel.safetensors"
    result = train(spec, [_scene(s) for s in range(3)], out, TrainConfig(epochs=4, steps_per_epoch=15, batch_size=4, lr=0.05), progress=events.append)
    assert result.checkpoint == out and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["pixel.safetensors"]  # no temp file left
    assert (result.n_train, result.n_val, result.steps_per_epoch) == (2, 1, 15)
    assert len(result.train_loss) == len(result.val_dice) == 4 and len(events) == 60
    assert [e.val_dice is not None for e in events].count(True) == 4
    assert result.train_loss[-1] < result.train_loss[0]
    assert result.val_dice[-1] > 0.95  # a linear per-pixel problem: nearly perfect
    model = load_model(replace(spec, checkpoint=out))
    image, label = _scene(9)
    with torch.no_grad():
        x = (image.astype(np.float32) - np.array([100, 127], np.float32)[:, None, None]) / np.array([20, 70], np.float32)[:, None, None]
        pred = model(torch.from_numpy(x[None])).argmax(1)[0].numpy()
    assert mean_dice(pred, label // 10, 3) > 0.95


def test_same_seed_same_checkpoint(tmp_path, spec_factory):
    spec = spec_factory("torch.nn:Conv2d", params=PIXEL_MODEL)
    config = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, seed=5, val_fraction=0)
    a = train(spec, [_scene(0)], tmp_path / "a.safetensors", config)
    b = train(spec, [_scene(0)], tmp_path / "b.safetensors", config)
    c = train(spec, [_scene(0)], tmp_path / "c.safetensors", replace(config, seed=6))
    assert a.val_dice == () and a.n_val == 0
    wa, wb, wc = (load_file(str(r.checkpoint)) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["weight"], wc["weight"])


def test_unet_2d_geotiffs(tmp_path, spec_factory):
    import rasterio
    from rasterio.transform import from_origin

    pairs = []
    for i in range(2):
        image, label = _scene(i)
        profile = {"driver": "GTiff", "height": 48, "width": 64, "crs": "EPSG:32633", "transform": from_origin(500000, 4e6, 10, 10)}
        with rasterio.open(tmp_path / f"img{i}.tif", "w", count=2, dtype="uint8", **profile) as dst:
            dst.write(image)
        with rasterio.open(tmp_path / f"lab{i}.tif", "w", count=1, dtype="uint8", **profile) as dst:
            dst.write(label, 1)
        pairs.append((tmp_path / f"img{i}.tif", tmp_path / f"lab{i}.tif"))
    spec = spec_factory("unet", "raster", [32, 32], params={"channels": [8, 16], "strides": [2], "num_res_units": 0})
    result = train(spec, pairs, tmp_path / "unet2d.safetensors", TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2))
    assert result.n_train == result.n_val == 1 and len(result.val_dice) == 2
    model = load_model(replace(spec, checkpoint=result.checkpoint))
    assert tuple(model(torch.zeros(1, 2, 32, 32)).shape) == (1, 3, 32, 32)


def test_unet_3d_nifti_smaller_than_window(tmp_path, spec_factory):
    """A volume thinner than the window is padded; NIfTI (i, j, k) becomes (Z, Y, X) = (k, j, i)."""
    rng = np.random.default_rng(0)
    label = np.zeros((20, 18, 12), np.uint8)  # (i, j, k)
    label[5:15, 4:14, 3:9] = 10
    label[8:12, 8:12, 5:7] = 20
    image = (label * 30 + rng.normal(0, 5, label.shape)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "ct_seg.nii.gz")
    spec = spec_factory(
        "unet", "volume", [16, 16, 16], in_channels=1, params={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        normalize={"kind": "window", "min": -100, "max": 700}, spacing=[3.0, 1.5, 1.5],
    )
    pairs = [(tmp_path / "ct.nii.gz", tmp_path / "ct_seg.nii.gz")]
    result = train(spec, pairs, tmp_path / "unet3d.safetensors", TrainConfig(epochs=1, steps_per_epoch=2, batch_size=1))
    assert result.checkpoint.is_file() and len(result.val_dice) == 1
    model = load_model(replace(spec, checkpoint=result.checkpoint))
    assert tuple(model(torch.zeros(1, 1, 16, 16, 16)).shape) == (1, 3, 16, 16, 16)

    with pytest.raises(InputError, match=r"voxel spacing \(3\.0, 1\.5, 1\.5\) mm \(z, y, x\) differs from the model's \(2\.0, 2\.0, 2\.0\)"):
        train(replace(spec, spacing=(2.0, 2.0, 2.0)), [(tmp_path / "ct.nii.gz", tmp_path / "ct_seg.nii.gz")], tmp_path / "x.safetensors")
    nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.5, 3.0, 1.0])), tmp_path / "moved_seg.nii.gz")
    with pytest.raises(InputError, match="moved_seg.nii.gz: label grid differs from ct.nii.gz"):
        train(spec, [(tmp_path / "ct.nii.gz", tmp_path / "moved_seg.nii.gz")], tmp_path / "x.safetensors")


def test_bad_inputs_fail_before_training(tmp_path, spec_factory):
    spec = spec_factory("torch.nn:Conv2d", params=PIXEL_MODEL)
    image, label = _scene(0)
    out = tmp_path / "w.safetensors"
    with pytest.raises(InputError, match=r"pair 0: label values \[7\] are not class ids \[0, 10, 20\]"):
        train(spec, [(image, np.full_like(label, 7))], out)
    with pytest.raises(InputError, match="pair 0: 3 channels, model 'test-torch.nn:Conv2d' needs 2"):
        train(spec, [(np.zeros((3, 8, 8)), np.zeros((8, 8)))], out)
    with pytest.raises(InputError, match=r"label shape \(8, 9\) differs from image shape \(8, 8\)"):
        train(spec, [(np.zeros((2, 8, 8)), np.zeros((8, 9)))], out)
    with pytest.raises(CheckpointError, match="give an output path ending in .safetensors"):
        train(spec, [(image, label)], tmp_path / "w.pt")
    wrong = spec_factory("torch.nn:Conv2d", params={**PIXEL_MODEL, "out_channels": 4})
    with pytest.raises(ModelSpecError, match="returns 4 channels but the spec lists 3 classes"):
        train(wrong, [(image, label)], out)
    assert not out.exists()


def test_mean_dice():
    ref = np.array([0, 0, 1, 1, 2])
    assert mean_dice(ref, ref, 3) == 1.0
    # class 0: 2*1/(1+2); class 1: 2*2/(3+2); class 2: 2*1/(1+1); class absent everywhere ignored
    pred = np.array([0, 1, 1, 1, 2])
    assert mean_dice(pred, ref, 4) == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
