"""Segmentation scores against a reference: confusion matrix, per-class IoU and Dice.

Pure numpy on label arrays of any shape; class ids (not logit indices) throughout. Pixels whose
reference or prediction is not one of ``class_ids`` (e.g. nodata 255) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(pred: np.ndarray, ref: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """``(K, K)`` int64 counts: row = reference class, column = predicted class, in ``class_ids`` order.

    Raises:
        ValueError: ``pred`` and ``ref`` differ in shape.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    ids = np.asarray(class_ids, dtype=np.int64)
    lut_size = int(max(ids.max(), pred.max(initial=0), ref.max(initial=0))) + 1
    lut = np.full(lut_size, -1, np.int64)
    lut[ids] = np.arange(len(ids))
    p, r = lut[pred.ravel().astype(np.int64)], lut[ref.ravel().astype(np.int64)]
    keep = (p >= 0) & (r >= 0)
    k = len(ids)
    return np.bincount(r[keep] * k + p[keep], minlength=k * k).reshape(k, k)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union per class from a confusion matrix; NaN where a class is in neither."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice (F1) per class from a confusion matrix; NaN where a class is in neither."""
    tp = np.diag(cm).astype(np.float64)
    total = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * tp / total, np.nan)
