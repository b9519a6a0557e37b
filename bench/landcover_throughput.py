"""End-to-end land-cover throughput: several scenes through ``segment_raster``, a few in flight at once
(as the ``landcover`` flow runs them), with SegFormer-B0 or U-Net (random weights) on 512x512 windows.

    python bench/landcover_throughput.py --device cuda --side 16384 --scenes 4 --parallel 2 [--model segformer-b0]

Each scene is a synthetic 4-band uint8 tiled DEFLATE GeoTIFF (UTM) and goes the whole way: ingest
into zarr, engine, label COG, area statistics, quicklook. Prints each scene's stage seconds and,
for the run: wall seconds, Mpx/s end to end (all scenes' pixels / wall), the pure forward's Mpx/s
for the same number of windows (model alone, batches already on the device), and the device need
= pure forward time / wall: the share of the run the model alone keeps the device busy. With
several scenes in flight, one scene's ingest, COG and statistics (CPU) overlap another's model
(device), which is how a nightly run over many scenes fills a GPU. Issue target on one H100:
>= 50 Mpx/s end to end for SegFormer-B0. Runs on CPU too (small ``--side``; the smoke test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other bench scripts' helpers

from gpu_throughput import SPECS, _sync, build, pure_forward_seconds  # noqa: E402
from raster_scaling import make_raster  # noqa: E402

STAGES = ("ingest", "segment", "cog", "stats", "quicklook")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8192, help="scene side in pixels")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2, help="scenes in flight at once (the flow's max_parallel)")
    parser.add_argument("--model", default="segformer-b0", choices=list(SPECS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--block", type=int, default=None, help="block edge (default: segpipe raster's, 2048 on GPU, 1024 on CPU)")
    args = parser.parse_args()

    from pipeline.engine import EngineConfig
    from pipeline.memory import limit_malloc_arenas
    from pipeline.raster.run import segment_raster
    from pipeline.windows import auto_device

    limit_malloc_arenas()
    device = auto_device(args.device)
    spec, model = build(args.model, 512, device)
    with tempfile.TemporaryDirectory(prefix="segpipe-landcover-bench-") as tmp:
        tmp = Path(tmp)
        make_raster(tmp / "base.tif", args.side)
        scenes = []
        for i in range(args.scenes):  # one file, several names: each scene is segmented in full
            scenes.append(tmp / f"scene{i}.tif")
            os.link(tmp / "base.tif", scenes[-1])
        make_raster(tmp / "warm.tif", 1024)
        segment_raster(tmp / "warm.tif", spec, tmp / "warm", device=str(device), model=model, block=args.block)  # cuDNN, imports

        def one(scene: Path):
            return segment_raster(scene, spec, tmp / "out", device=str(device), model=model, block=args.block, time="2026-01-01")

        _sync(device)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(pool.map(one, scenes))
        _sync(device)
        wall = time.perf_counter() - t0

    windows = sum(r.engine.windows_run for r in results)
    batch = EngineConfig(window=(512, 512)).batch_for(device)
    forward = pure_forward_seconds(model, device, 512, batch, windows, "auto")
    mpx = args.scenes * args.side**2 / 1e6
    print(f"{args.scenes} scenes {args.side}x{args.side}x4, {args.parallel} in flight, model {args.model}, device {device}, "
          f"block {args.block or 'default'}, batch {batch}")
    print(f"{'scene':<8}" + "".join(f"{s:>10}" for s in STAGES) + f"{'model s':>9}{'windows':>9}")
    for r in results:
        print(f"{r.scene[-8:]:<8}" + "".join(f"{r.timings.get(s, 0.0):>10.2f}" for s in STAGES)
              + f"{r.engine.seconds_model:>9.2f}{r.engine.windows_run:>9}")
    print(f"wall {wall:.2f} s for {mpx:.0f} Mpx: end to end {mpx / wall:.1f} Mpx/s")
    print(f"pure forward of the same {windows} windows: {forward:.2f} s = {mpx / forward:.1f} Mpx/s")
    print(f"device need = pure forward / wall = {100 * forward / wall:.0f} %")
    print("target on one H100: >= 50 Mpx/s end to end for segformer-b0")


if __name__ == "__main__":
    main()
