"""Engine throughput and busy fraction for land-cover models on 512x512 windows (the GPU figures).

    python bench/gpu_throughput.py --device cuda [--side 16384] [--models segformer-b0 unet] [--batch 16]

For each model (random weights, built from a spec like the catalog's, 4 bands, 5 classes): the
engine over a synthetic 4-band uint8 raster in a zarr store (chunks = blocks, as the ingest writes
them), labels written to zarr, scale normalisation as in the catalog. Prints, per model: the
engine's Mpx/s, the pure forward's Mpx/s on the same batches (pre-extracted windows already on the
device, so no I/O), engine / forward time, and the busy fraction = time in the model (CUDA events on
a GPU) / engine wall time. Issue targets on one H100: >= 90 % busy, >= 50 Mpx/s for SegFormer-B0.
Runs on CPU too (small ``--side``), which is how the smoke test keeps it working.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SPECS = {
    "segformer-b0": {"architecture": "segformer", "params": {}},
    "unet": {"architecture": "unet", "params": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}},
}


def build(name: str, window: int, device: torch.device):
    from models.registry import build_network
    from models.spec import spec_from_dict

    spec = spec_from_dict({
        "name": f"bench-{name}", "task": "raster", **SPECS[name], "in_channels": 4,
        "classes": [{"id": i, "name": f"c{i}"} for i in range(5)], "window": [window, window], "overlap": 0.25,
        "normalize": {"kind": "scale", "factor": 1 / 255},
    })
    torch.manual_seed(0)
    return spec, build_network(spec).to(device).eval()


def synthetic_source(folder: Path, side: int, block: int):
    import zarr

    rng = np.random.default_rng(side)
    source = zarr.create_array(store=str(folder / "image.zarr"), shape=(4, side, side), chunks=(4, block, block), dtype="uint8")
    for y in range(0, side, block):
        source[:, y : y + block] = rng.integers(0, 255, size=(4, min(block, side - y), side), dtype=np.uint8)
    return source


def pure_forward_seconds(model, device, window: int, batch: int, n_windows: int, precision: str) -> float:
    """Model time for ``n_windows`` windows in batches already on the device (no I/O, no stitching)."""
    from pipeline.windows import _autocast

    x = torch.rand((batch, 4, window, window), device=device).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device, precision):
        model(x)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(-(-n_windows // batch)):
            model(x)
        _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8192, help="raster side in pixels")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto = bf16/fp16 autocast on GPU, float32 on CPU")
    parser.add_argument("--compile", default="none", help="torch.compile mode for the engine's model")
    args = parser.parse_args()

    import zarr

    from models.normalize import normalizer
    from pipeline.engine import EngineConfig, run_engine
    from pipeline.windows import auto_device

    device = auto_device(args.device)
    mpx = args.side**2 / 1e6
    rows = []
    with tempfile.TemporaryDirectory(prefix="segpipe-gpu-bench-") as tmp:
        source = synthetic_source(Path(tmp), args.side, args.block)
        for name in args.models:
            spec, model = build(name, args.window, device)
            cfg = EngineConfig(window=(args.window,) * 2, overlap=0.25, block=(args.block,) * 2, batch_size=args.batch,
                               device=str(device), precision=args.precision, compile=args.compile)
            preprocess = normalizer(spec.normalize)
            warm = zarr.create_array(store={}, shape=(args.window * 2,) * 2, chunks=(args.block,) * 2, dtype="uint8")
            run_engine(source[:, : args.window * 2, : args.window * 2], model, cfg, warm, preprocess=preprocess)  # warm-up (cuDNN, compile)
            out = zarr.create_array(store=str(Path(tmp) / f"{name}.zarr"), shape=(args.side,) * 2, chunks=(args.block,) * 2, dtype="uint8", overwrite=True)
            _sync(device)
            t0 = time.perf_counter()
            report = run_engine(source, model, cfg, out, preprocess=preprocess)
            _sync(device)
            wall = time.perf_counter() - t0
            forward = pure_forward_seconds(model, device, args.window, args.batch, report.windows_run, args.precision)
            rows.append((name, wall, report, forward))

    print(f"raster {args.side}x{args.side}x4 ({mpx:.0f} Mpx), window {args.window}, overlap 0.25, block {args.block}, "
          f"batch {args.batch}, device {device}, precision {args.precision}, compile {args.compile}")
    print(f"{'model':<14}{'engine s':>9}{'Mpx/s':>8}{'forward s':>10}{'fwd Mpx/s':>10}{'eng/fwd':>8}{'busy':>7}{'model s':>9}{'stitch s':>9}{'windows':>9}")
    for name, wall, report, forward in rows:
        busy = report.seconds_model / wall
        print(f"{name:<14}{wall:>9.2f}{mpx / wall:>8.1f}{forward:>10.2f}{mpx / forward:>10.1f}{wall / forward:>8.2f}"
              f"{100 * busy:>6.0f}%{report.seconds_model:>9.2f}{report.seconds_stitch:>9.2f}{report.windows_run:>9}")
    print("busy = time in the model (CUDA events on a GPU) / engine wall time; targets on one H100: >= 90 % busy, "
          ">= 50 Mpx/s end to end for segformer-b0")


if __name__ == "__main__":
    main()
