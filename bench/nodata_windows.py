"""Windows over nodata only are left out: what a scene's nodata collar costs with and without that.

A Landsat scene in its UTM grid is a footprint rotated ~13 degrees with ~40 % nodata around it. The
engine always skipped whole blocks without data (``pipeline.raster.segment.mark_empty_blocks``); it now
also leaves out every window that covers no valid pixel (``run_engine(valid=...)``). This prints, for a
synthetic footprint, the windows the model runs under each rule (counted from the engine's own plan,
no model needed) and, with ``--time``, the engine's wall time with and without the mask on one size
with a real network (a catalog spec's architecture, random weights), and the label agreement on valid
pixels (must be 100 %).

    python bench/nodata_windows.py [--side 7800 8800] [--angle 13] [--time 1536 --model landcover-unet]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import zarr

from pipeline.engine import EngineConfig, plan_for, run_engine, windows_with_data


def footprint(shape: tuple[int, int], angle_deg: float) -> np.ndarray:
    """True inside a rectangle rotated by ``angle_deg`` covering ~60 % of the grid ``(Y, X)``."""
    rows, cols = shape
    yy, xx = np.ogrid[0:rows, 0:cols]
    th = np.deg2rad(angle_deg)
    cy, cx = rows / 2, cols / 2
    u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
    v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
    return (np.abs(u) < 0.386 * cols) & (np.abs(v) < 0.385 * rows)


def window_counts(shape: tuple[int, int], window: int, block: int, valid) -> tuple[int, int, int]:
    """(windows in the grid, windows run when empty blocks are skipped, windows run when windows over nodata are left out too)."""
    plan = plan_for((1, *shape), EngineConfig(window=(window, window), block=(block, block)))
    empty = {b for b in plan.order() if not np.asarray(valid[plan.slices(b)]).any()}
    needed = [b for b in plan.order() if any(t not in empty for t in plan.targets(b))]
    blocks_rule = sum(len(plan.windows(b)) for b in needed)
    windows_rule = sum(len(windows_with_data(plan, b, valid)) for b in needed)
    return plan.grid.n_windows, blocks_rule, windows_rule


def timed(image, valid, model, window: int, block: int) -> tuple[float, np.ndarray, int]:
    config = EngineConfig(window=(window, window), block=(block, block), device="cpu")
    out = zarr.create_array(store={}, shape=image.shape[1:], chunks=(block, block), dtype="uint8")
    t0 = time.perf_counter()
    report = run_engine(image, model, config, out, valid=valid)
    return time.perf_counter() - t0, out[...], report.windows_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, nargs=2, default=[7800, 8800], metavar=("ROWS", "COLS"), help="scene for the window counts")
    parser.add_argument("--angle", type=float, default=13.0, help="footprint rotation, degrees")
    parser.add_argument("--time", type=int, default=0, metavar="SIDE", help="also time the engine on a SIDE x SIDE scene (0: counts only)")
    parser.add_argument("--model", default="landcover-unet", help="catalog spec whose architecture is timed (random weights)")
    args = parser.parse_args()

    shape = tuple(args.side)
    valid = footprint(shape, args.angle)
    print(f"footprint {shape[0]}x{shape[1]}, rotated {args.angle} deg, {1 - valid.mean():.0%} nodata")
    print(f"{'window':>6} {'block':>6} {'grid':>7} {'empty blocks':>13} {'+ windows':>10} {'saved':>6}")
    for window, block in ((256, 1024), (512, 1024), (512, 2048)):
        total, by_block, by_window = window_counts(shape, window, block, valid)
        print(f"{window:>6} {block:>6} {total:>7} {by_block:>13} {by_window:>10} {1 - by_window / by_block:>6.0%}")
    if args.time:
        import torch

        from models.registry import build_network
        from models.spec import load_spec

        spec = load_spec(args.model)
        torch.manual_seed(0)
        model = build_network(spec).eval()
        side, window = args.time, spec.window[0]
        mask = footprint((side, side), args.angle)
        image = np.where(mask, np.random.default_rng(0).normal(size=(spec.in_channels, side, side)), 0).astype(np.float32)
        all_s, all_labels, all_windows = timed(image, None, model, window, 1024)
        skip_s, skip_labels, skip_windows = timed(image, mask, model, window, 1024)
        agree = (all_labels[mask] == skip_labels[mask]).mean()
        print(f"\n{args.model} {side}x{side}, window {window}, block 1024, cpu")
        print(f"{'rule':<22} {'windows':>8} {'seconds':>8}")
        print(f"{'every window':<22} {all_windows:>8} {all_s:>8.2f}")
        print(f"{'windows with data':<22} {skip_windows:>8} {skip_s:>8.2f}")
        print(f"time ratio {skip_s / all_s:.2f}, windows ratio {skip_windows / all_windows:.2f}, valid labels agree {agree:.4%}")


if __name__ == "__main__":
    main()
