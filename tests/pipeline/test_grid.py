"""The window grid is MONAI's, and the block plan covers every window exactly once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

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


@pytest.mark.parametrize("strip", [None, 1, 2, 3, 100])
@pytest.mark.parametrize(
    "shape,window,block",
    [((200, 90, 70), (32, 32, 32), (40, 40, 40)), ((90, 700), (64, 64), (32, 40)), ((700, 90), (64, 48), (40, 16)), ((300, 517), (64, 64), (50, 70))],
)
def test_sources_precede_targets_in_processing_order(shape, window, block, strip):
    """Strips or not, every block comes after all its sources (windows wider than a block too)."""
    plan = BlockPlan.build(WindowGrid(shape, window, 0.5), block)
    order = plan.order(strip)
    assert sorted(order) == sorted(np.ndindex(plan.shape))  # every block once
    position = {b: i for i, b in enumerate(order)}
    for b in order:
        assert all(position[s] <= position[b] for s in plan.sources(b))
        assert b in plan.targets(b) or not plan.windows(b)


def test_order_runs_strips_along_the_innermost_axis():
    plan = BlockPlan.build(WindowGrid((200, 64), (16, 16), 0.25), (20, 16))  # 10 x 4 blocks, the longer rows outermost
    order = plan.order(2)
    assert order[:5] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert order[19:22] == [(9, 1), (0, 2), (0, 3)] and order[-1] == (9, 3)
    assert plan.order(4) == [(r, c) for r in range(10) for c in range(4)]  # one strip: lexicographic
    wide = BlockPlan.build(WindowGrid((64, 200), (16, 16), 0.25), (16, 20))  # wider than tall: columns outermost
    assert wide.order(2)[:3] == [(0, 0), (1, 0), (0, 1)]
