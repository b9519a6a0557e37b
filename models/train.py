"""Fit a spec's network on labelled images: random window crops, Dice + cross-entropy, Adam.

Small and honest by design: every image is held in memory (normalised once, as at inference), crops
are drawn uniformly (an image is picked with probability proportional to its size), there is no
augmentation, and validation runs MONAI sliding-window inference over whole held-out images with the
spec's window, overlap and blend, reporting the mean Dice over the classes present (in the reference
or the prediction). The result is a safetensors checkpoint :func:`models.checkpoint.load_model` reads.

Labels hold class ids (the spec's ``classes[].id``); they are mapped to logit indices in spec order.
Pixels equal to the spec's ``nodata`` (unlabelled) and the padding of images smaller than a window
are :data:`IGNORE`: :func:`dice_ce_loss` leaves them out of both terms, so padding is never taught
as a class, and validation scores only labelled pixels.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from models.checkpoint import save_state_dict
from models.probe import check_logits, probe_network
from models.registry import build_network
from models.spec import ModelSpec
from models.train_data import IGNORE, Pair, Sample, load_pair
from pipeline.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: passes of ``steps_per_epoch`` optimiser steps.
        steps_per_epoch: ``None`` = enough window crops to cover the training pixels about once.
        batch_size: windows per step (also the sliding-window batch in validation).
        lr: Adam learning rate.
        seed: seeds torch, numpy and random (crops, split and initial weights).
        val_fraction: share of pairs held out for validation (at least one when > 0 and there are
            two or more pairs; with a single pair, validation reuses the training image).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.2
    device: Device | str = "cpu"


@dataclass(frozen=True)
class TrainProgress:
    """One progress event: after each step; the epoch's last event also carries ``val_dice``."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int
    loss: float
    val_dice: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: the checkpoint and per-epoch figures (``val_dice`` empty without validation)."""

    checkpoint: Path
    epochs: int
    steps_per_epoch: int
    train_loss: tuple[float, ...]
    val_dice: tuple[float, ...]
    n_train: int
    n_val: int
    seconds: float


def train(
    spec: ModelSpec,
    pairs: Sequence[Pair],
    out_path: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train ``spec``'s network from random initialisation and write ``out_path`` (``.safetensors``).

    Raises:
        InputError: unreadable pairs, wrong channel count, labels off the image grid or not class ids.
        ModelSpecError: the network does not map windows to ``(N, n_classes, *window)`` logits.
        CheckpointError: ``out_path`` does not end in ``.safetensors``.
    """
    start = time.perf_counter()
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise CheckpointError(out_path, "checkpoints are written as safetensors", "give an output path ending in .safetensors")
    _check_config(config)
    samples = [load_pair(spec, pair, i) for i, pair in enumerate(pairs)]
    if not samples:
        raise InputError("pairs", "no training pairs given", "give at least one (image, label) pair")
    _seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train_set, val_set = _split(samples, config.val_fraction, rng)
    steps = config.steps_per_epoch or _default_steps(train_set, spec.window, config.batch_size)
    device = _device(config.device)

    network = build_network(spec).to(device).eval()
    probe_network(spec, network, device)  # a network that does not fit the spec fails before any step
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    weights = np.array([s.label.size for s in train_set], dtype=np.float64)
    weights /= weights.sum()
    losses: list[float] = []
    dices: list[float] = []
    for epoch in range(1, config.epochs + 1):
        total = 0.0
        for step in range(1, steps + 1):
            x, y = _batch(train_set, weights, spec.window, config.batch_size, rng)
            optimiser.zero_grad(set_to_none=True)
            logits = network(x.to(device))
            if epoch == step == 1:
                check_logits(spec, logits, tuple(x.shape))
            loss = dice_ce_loss(logits, y.to(device))
            loss.backward()
            optimiser.step()
            value = loss.detach().item()
            total += value
            last = step == steps
            dice = _validate(network, val_set, spec, config.batch_size, device) if last and val_set else None
            if progress is not None:
                progress(TrainProgress(epoch, config.epochs, step, steps, value, dice))
        losses.append(total / steps)
        if dice is not None:
            dices.append(dice)
        log.info("epoch %d/%d: loss %.4f, validation mean Dice %s", epoch, config.epochs, losses[-1], "n/a" if dice is None else f"{dice:.3f}")
    metadata = {"spec": spec.name, "architecture": spec.architecture, "epochs": str(config.epochs), "seed": str(config.seed)}
    save_state_dict(network, out_path, metadata=metadata)
    return TrainResult(out_path, config.epochs, steps, tuple(losses), tuple(dices), len(train_set), len(val_set), time.perf_counter() - start)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice + cross-entropy over the pixels whose target is not ``ignore_index``.

    Equal to MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` when no pixel is ignored (Dice per
    sample and class with ``smooth`` in numerator and denominator, averaged; cross-entropy averaged
    over pixels). Ignored pixels add nothing to either term and get no gradient, whatever their logits.

    Args:
        logits: ``(N, K, *spatial)``.
        target: ``(N, 1, *spatial)`` int64 class indices in ``0..K-1`` or ``ignore_index``.
    """
    import torch.nn.functional as F

    target = target[:, 0].long()
    valid = target != ignore_index
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / valid.sum().clamp(min=1)
    probs = torch.softmax(logits, dim=1)
    mask = valid.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).movedim(-1, 1).to(probs.dtype) * mask
    probs = probs * mask
    axes = tuple(range(2, logits.ndim))
    intersection = (probs * onehot).sum(axes)
    denominator = probs.sum(axes) + onehot.sum(axes)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return dice.mean() + ce


def mean_dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the class indices present in ``pred`` or ``ref`` (arrays of indices, same shape).

    Pixels where ``ref`` is :data:`IGNORE` (unlabelled) are left out.
    """
    labelled = ref != IGNORE
    pred, ref = pred[labelled], ref[labelled]
    scores = []
    for k in range(n_classes):
        p, r = pred == k, ref == k
        denom = int(p.sum()) + int(r.sum())
        if denom:
            scores.append(2.0 * int(np.logical_and(p, r).sum()) / denom)
    return float(np.mean(scores)) if scores else 1.0


# --- loop helpers -----------------------------------------------------------------------------------


def _check_config(config: TrainConfig) -> None:
    if config.epochs < 1 or config.batch_size < 1 or (config.steps_per_epoch is not None and config.steps_per_epoch < 1):
        bad = {"epochs": config.epochs, "batch_size": config.batch_size, "steps_per_epoch": config.steps_per_epoch}
        listed = ", ".join(f"{k}={v}" for k, v in bad.items() if v is not None and v < 1)
        raise InputError("train config", f"{listed}: must be >= 1", "pass positive values")
    if not 0.0 <= config.val_fraction < 1.0 or config.lr <= 0:
        raise InputError("train config", f"val_fraction {config.val_fraction} / lr {config.lr} out of range", "use 0 <= val_fraction < 1 and lr > 0")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _split(samples: list[Sample], fraction: float, rng: np.random.Generator) -> tuple[list[Sample], list[Sample]]:
    if fraction == 0:
        return samples, []
    if len(samples) == 1:
        log.warning("only one training pair: validation uses the training image")
        return samples, samples
    order = rng.permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]


def _default_steps(samples: list[Sample], window: tuple[int, ...], batch: int) -> int:
    pixels = sum(s.label.size for s in samples)
    return max(1, math.ceil(pixels / math.prod(window) / batch))


def _batch(samples: list[Sample], weights: np.ndarray, window: tuple[int, ...], batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for i in rng.choice(len(samples), size=batch, p=weights):
        image, label = _crop(samples[i], window, rng)
        images.append(image)
        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)[:, None])


def _crop(sample: Sample, window: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = sample.label.shape
    starts = [int(rng.integers(0, max(s - w, 0) + 1)) for s, w in zip(shape, window)]
    region = tuple(slice(a, a + w) for a, w in zip(starts, window))
    image, label = sample.image[(slice(None), *region)], sample.label[region]
    pad = [(0, w - s) for s, w in zip(label.shape, window)]
    if any(after for _, after in pad):  # an image smaller than the window: padding is ignored by the loss
        image, label = np.pad(image, [(0, 0), *pad]), np.pad(label, pad, constant_values=IGNORE)
    return image, label


@torch.no_grad()
def _validate(network: torch.nn.Module, samples: list[Sample], spec: ModelSpec, batch: int, device: torch.device) -> float:
    from monai.inferers import sliding_window_inference

    network.eval()
    scores = []
    for sample in samples:
        x = torch.from_numpy(sample.image)[None].to(device)
        logits = sliding_window_inference(x, spec.window, batch, network, overlap=spec.overlap, mode=spec.blend)
        scores.append(mean_dice(logits.argmax(1)[0].cpu().numpy(), sample.label, spec.n_classes))
    network.train()
    return float(np.mean(scores))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
