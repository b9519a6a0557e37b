"""Engine vs pure model forward vs MONAI sliding_window_inference on one 3D volume.

Prints a table and the ratios measured in this one run (machines here are noisy; ratios are what count).

    python bench/engine.py [--shape 256 256 160] [--window 96] [--threads 2] [--block 128] [--device cpu]

Configuration of the foundation issue: MONAI UNet channels 16-32-64-128, strides 2-2-2, 2 residual
units, 8 classes, volume 256x256x160, window 96^3, overlap 0.5, gaussian, batch 4, 2 threads.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import zarr
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from pipeline.engine import EngineConfig, auto_device, run_engine
from pipeline.grid import WindowGrid


def build_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=8, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
    return net.to(device).eval()


def synthetic_volume(shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random volume with blobs, (1, *shape) float32."""
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(0, 6, s, dtype=np.float32) for s in shape], indexing="ij")
    vol = np.sin(grids[0]) * np.cos(grids[1]) + np.sin(grids[2] * 1.3)
    return (vol + 0.3 * rng.normal(size=shape).astype(np.float32))[None].astype(np.float32)


def pure_forward(model, image: np.ndarray, window, overlap, batch, device) -> float:
    """Model time for exactly the windows of the global grid, batches pre-extracted (no stitching)."""
    grid = WindowGrid(image.shape[1:], window, overlap)
    starts = list(itertools.product(*grid.starts))
    tensor = torch.from_numpy(image)
    batches = [
        torch.stack([tensor[(slice(None), *(slice(s, s + w) for s, w in zip(st, window)))] for st in starts[i : i + batch]]).to(device)
        for i in range(0, len(starts), batch)
    ]
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(b)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160])
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=None, help="engine block edge (default: engine default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best time of each method counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = auto_device(args.device)
    model = build_model(device)
    image = synthetic_volume(tuple(args.shape))
    window = (args.window,) * 3
    grid = WindowGrid(image.shape[1:], window, args.overlap)
    with torch.inference_mode():  # warm-up: every batch size the runs will use (oneDNN sets up per shape)
        for n in range(1, args.batch + 1):
            model(torch.zeros((n, 1, *window), device=device))

    block = None if args.block is None else (args.block,) * 3
    cfg = EngineConfig(window=window, overlap=args.overlap, block=block, batch_size=args.batch, device=str(device), precision="float32")
    chunks = cfg.block_for(image.shape[1:])

    def engine_run():
        out = zarr.create_array(store={}, shape=image.shape[1:], chunks=chunks, dtype="uint8")
        return run_engine(image, model, cfg, out), out

    def monai_run():
        with torch.inference_mode():
            ref = sliding_window_inference(
                torch.from_numpy(image)[None].to(device), window, args.batch, model, overlap=args.overlap, mode="gaussian"
            )
        return ref[0].argmax(0).cpu().numpy()

    # Rounds alternate the three methods and keep each one's best time, so background load hits all alike.
    times = {"forward": [], "engine": [], "monai": []}
    for _ in range(args.rounds):
        times["forward"].append(pure_forward(model, image, window, args.overlap, args.batch, device))
        t0 = time.perf_counter()
        report, out = engine_run()
        times["engine"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref_labels = monai_run()
        _sync(device)
        times["monai"].append(time.perf_counter() - t0)
    t_forward, t_engine, t_monai = (min(times[k]) for k in ("forward", "engine", "monai"))
    labels = out[...]

    agreement = float((labels == ref_labels).mean())
    print(f"volume {tuple(args.shape)}, window {window}, overlap {args.overlap}, batch {args.batch}, rounds {args.rounds}, "
          f"threads {args.threads}, device {device}, block {chunks}, windows {grid.n_windows}")
    print(f"{'method':<34}{'seconds':>10}{'x forward':>12}")
    for name, t in (("pure model forward", t_forward), ("segpipe engine", t_engine), ("MONAI sliding_window_inference", t_monai)):
        print(f"{name:<34}{t:>10.2f}{t / t_forward:>12.3f}")
    print(f"engine / forward      = {t_engine / t_forward:.3f}   (target <= 1.10)")
    print(f"MONAI / engine        = {t_monai / t_engine:.3f}   (target >= 1.40 on CPU)")
    print(f"windows run / grid    = {report.windows_run}/{report.windows_total} = {report.duplication:.3f}")
    print(f"engine split (last round): model {report.seconds_model:.2f}s, stitch {report.seconds_stitch:.2f}s, read {report.seconds_read:.2f}s (background), write {report.seconds_write:.2f}s (background)")
    print(f"label agreement with MONAI = {agreement * 100:.4f} %")


if __name__ == "__main__":
    main()
