"""Training ignores window padding and nodata labels: they are never taught as class 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.train import IGNORE, TrainConfig, _batch, dice_ce_loss, mean_dice, train
from models.train_data import Sample as _Sample
from models.train_data import to_indices as _to_indices

PIXEL_MODEL = {"in_channels": 2, "out_channels": 3, "kernel_size": 1}


def _small_sample(shape=(20, 12)) -> _Sample:
    return _Sample("small", np.ones((2, *shape), np.float32), np.full(shape, 2, np.int64))


def test_padding_of_an_image_smaller_than_the_window_is_ignored():
    sample = _small_sample()
    x, y = _batch([sample], np.array([1.0]), (32, 32), 3, np.random.default_rng(0))
    assert tuple(x.shape) == (3, 2, 32, 32) and tuple(y.shape) == (3, 1, 32, 32)
    assert torch.count_nonzero(y == 2) == 3 * 20 * 12
    assert torch.count_nonzero(y == IGNORE) == 3 * (32 * 32 - 20 * 12)
    assert torch.count_nonzero(y == 0) == 0  # padding is no longer class index 0


def test_volume_padding_is_ignored():
    sample = _Sample("thin", np.ones((1, 30, 16, 16), np.float32), np.ones((30, 16, 16), np.int64))
    _, y = _batch([sample], np.array([1.0]), (64, 16, 16), 1, np.random.default_rng(0))
    assert torch.count_nonzero(y == IGNORE) == (64 - 30) * 16 * 16
    assert torch.count_nonzero(y == 0) == 0


def test_ignored_positions_add_nothing_to_the_loss():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    target[:, :, 5:, :] = IGNORE
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = dice_ce_loss(logits, target)
    loss.backward()
    assert torch.count_nonzero(logits.grad[:, :, 5:, :]) == 0  # no gradient at all on padding
    assert torch.count_nonzero(logits.grad[:, :, :5, :]) > 0
    changed = logits.detach().clone()
    changed[:, :, 5:, :] = torch.randn(2, 3, 3, 8) * 100  # whatever the network says on padding
    assert dice_ce_loss(changed, target).item() == pytest.approx(loss.item(), abs=1e-6)
    # ... and the loss equals the loss of the labelled part alone
    assert dice_ce_loss(logits[:, :, :5], target[:, :, :5]).item() == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 4, 4, 6, 5)])
def test_loss_equals_monai_dice_ce_without_ignored_pixels(shape):
    from monai.losses import DiceCELoss

    torch.manual_seed(1)
    logits = torch.randn(*shape)
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]))
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    assert dice_ce_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_all_ignored_batch_gives_zero_loss():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = dice_ce_loss(logits, torch.full((1, 1, 4, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_nodata_labels_are_unlabelled(spec_factory):
    spec = spec_factory("torch.nn:Conv2d", params=PIXEL_MODEL, nodata=255)  # class ids 0, 10, 20
    label = np.array([[0, 10], [20, 255]], np.uint8)
    assert _to_indices(spec, "x", label).tolist() == [[0, 1], [2, IGNORE]]
    pred = np.array([[0, 1], [2, 0]])
    assert mean_dice(pred, _to_indices(spec, "x", label), 3) == 1.0  # the unlabelled pixel is not scored


def test_one_class_image_smaller_than_the_window_never_learns_class_0_on_padding(tmp_path, spec_factory):
    """Labels of the last class only, on a 20x12 image in a 32x32 window: the padded input (zeros) must
    not be taught as class 0 (the first class), which is what padding with label 0 did."""
    spec = spec_factory("torch.nn:Conv2d", params=PIXEL_MODEL, window=[32, 32])
    image = np.full((2, 20, 12), 3.0, np.float32)
    label = np.full((20, 12), 20, np.uint8)  # class index 2 everywhere
    config = TrainConfig(epochs=1, steps_per_epoch=30, batch_size=2, lr=0.1, val_fraction=0)
    result = train(spec, [(image, label)], tmp_path / "w.safetensors", config)
    weights = load_file(str(result.checkpoint))
    conv = torch.nn.Conv2d(2, 3, 1)
    conv.load_state_dict(weights)
    with torch.no_grad():
        padded = conv(torch.zeros(1, 2, 1, 1))[0, :, 0, 0]  # what the network says on padding
        inside = conv(torch.full((1, 2, 1, 1), 3.0))[0, :, 0, 0]
    assert int(inside.argmax()) == 2
    assert int(padded.argmax()) != 0
