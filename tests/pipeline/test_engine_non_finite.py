"""A model that returns NaN or infinite logits fails the run: argmax takes a NaN channel as the best
one, so such pixels were labelled with one class and the run looked complete (e.g. float16 autocast
overflowing on a GPU). Checked on the engine's real path (CPU), labels and logits output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from pipeline.engine import EngineConfig, run_engine
from pipeline.errors import EngineError


class Poisoned(torch.nn.Module):
    """Per pixel: logits = the two bands; ``bad`` (NaN or inf) where band 0 is exactly 7."""

    def __init__(self, bad: float) -> None:
        super().__init__()
        self.bad = bad

    def forward(self, x):
        return torch.where(x[:, :1] == 7, torch.full_like(x, self.bad), x)


def _run(image, output="labels"):
    config = EngineConfig(window=(32, 32), overlap=0.25, block=(64, 64), batch_size=2, device="cpu", output=output, class_ids=(0, 1))
    shape = image.shape[1:] if output == "labels" else (2, *image.shape[1:])
    chunks = config.block if output == "labels" else (2, *config.block)
    out = zarr.create_array(store={}, shape=shape, chunks=chunks, dtype="uint8" if output == "labels" else "float32")
    return run_engine(image, Poisoned(float("nan")), config, out), out


def test_nan_or_inf_logits_fail_the_run_and_finite_ones_pass():
    rng = np.random.default_rng(0)
    image = rng.uniform(10, 20, size=(2, 128, 128)).astype(np.float32)
    _, out = _run(image)  # no poisoned pixel: runs, labels are the brighter band
    assert np.array_equal(out[...], (image[1] > image[0]).astype(np.uint8))

    image[0, 100, 70] = 7  # one pixel in block (1, 1)
    with pytest.raises(EngineError, match=r"NaN or infinite logits in block \(1, 1\).*--device cpu"):
        _run(image)
    with pytest.raises(EngineError, match="NaN or infinite logits"):
        _run(image, output="logits")


def test_infinite_logits_fail_too():
    image = np.full((2, 64, 64), 12.0, dtype=np.float32)
    image[0, 5, 5] = 7
    config = EngineConfig(window=(32, 32), overlap=0.25, block=(64, 64), batch_size=2, device="cpu", output="labels", class_ids=(0, 1))
    out = zarr.create_array(store={}, shape=(64, 64), chunks=(64, 64), dtype="uint8")
    with pytest.raises(EngineError, match=r"block \(0, 0\)"):
        run_engine(image, Poisoned(float("inf")), config, out)
