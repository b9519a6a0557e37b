"""The window grid is MONAI's, and the block plan covers every window exactly once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from pipeline.errors import EngineError
from pipeline.grid import BlockPlan, WindowGrid


@pytest.mark.parametrize(
    "shape,window,overlap",
    [((300, 517), (64, 64), 0.25), ((96, 96), (96, 96), 0.5), ((1, 1000), (64, 64), 0.25), ((130, 77, 50), (32, 48, 16), 0.5), ((1000,), (7,), 0.9)],
)
def test_window_grid_matches_monai(shape, window, overlap):
    grid = WindowGrid(shape, window, overlap)
    padded = grid.padded_shape
    interval = _get_scan_interval(padded, window, len(shape), [overlap] * len(shape))
    monai_starts = sorted(tuple(s.start for s in sl) for sl in dense_patch_slices(padded, window, interval))
    ours = sorted(itertools.product(*grid.starts))
    assert ours == monai_starts


@pytest.mark.parametrize("block", [(16, 16), (64, 100), (300, 517), (1000, 1000)])
def test_every_window_runs_in_exactly_one_block(block):
    grid = WindowGrid((300, 517), (64, 64), 0.25)
    plan = BlockPlan.build(grid, block)
    windows = [w for b in plan.order() for w in plan.windows(b)]
    assert len(windows) == len(set(windows)) == grid.n_windows


def test_sources_precede_targets_in_processing_order():
    plan = BlockPlan.build(WindowGrid((200, 90, 70), (32, 32, 32), 0.5), (40, 40, 40))
    position = {b: i for i, b in enumerate(plan.order())}
    for b in plan.order():
        assert all(position[s] <= position[b] for s in plan.sources(b))
        assert b in plan.targets(b) or not plan.windows(b)


def test_every_pixel_of_a_block_is_covered_by_its_sources():
    plan = BlockPlan.build(WindowGrid((300, 517), (64, 64), 0.25), (50, 70))
    covered = np.zeros((300, 517), dtype=int)
    for b in plan.order():
        (y0, y1), (x0, x1) = plan.box(b)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


def test_invalid_grid_is_refused():
    with pytest.raises(EngineError, match="spatial axes"):
        WindowGrid((10, 10), (4, 4, 4), 0.25)
    with pytest.raises(EngineError, match="overlap"):
        WindowGrid((10, 10), (4, 4), 1.0)
