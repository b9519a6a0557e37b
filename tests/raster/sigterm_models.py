"""A per-pixel model slow enough (a pause per batch) for a test to send SIGTERM while a run is segmenting.
Imported by the model registry from a spec's ``architecture: tests.raster.sigterm_models:SlowPerPixel``."""

from __future__ import annotations

import time

import torch


class SlowPerPixel(torch.nn.Module):
    """``Conv2d(channels, channels, 1)`` (the checkpoint sets its weights) that pauses ``pause_s`` seconds per batch."""

    def __init__(self, channels: int = 3, pause_s: float = 0.05) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, kernel_size=1)
        self.pause_s = pause_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.pause_s)
        return self.conv(x)
