"""Confusion matrix, IoU and Dice on hand-computable cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo.metrics import confusion_matrix, dice_per_class, iou_per_class


def test_confusion_iou_dice_by_hand():
    ref = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 2]])
    cm = confusion_matrix(pred, ref, (0, 1, 2, 3))
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]  # nodata pixel left out
    iou = iou_per_class(cm)
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert np.isnan(iou[3])
    assert dice_per_class(cm)[:3] == pytest.approx([0.5, 0.8, 0.8])


def test_perfect_prediction_and_shape_mismatch():
    ref = np.random.default_rng(0).integers(0, 5, (8, 9, 10))
    assert np.all(dice_per_class(confusion_matrix(ref, ref, range(5))) == 1.0)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(ref[0], ref, range(5))
