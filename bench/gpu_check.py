"""Does the GPU path give the CPU's answers? Run this first on a machine with a GPU, before timing it.

    python bench/gpu_check.py --device cuda [--small]

The GPU path (pipeline/staging.py: page-locked reads, copies on the readers' CUDA stream, labels
fetched by non-blocking copies that the writer thread waits for) was written and tested on a CPU
with the CUDA parts mocked; a missing stream wait or a buffer reused too early shows up only on a
real device, as labels that differ from run to run or from the CPU's. Checks, each a table row:

1. 2D per-pixel model (1x1 Conv2d, float32, TF32 off) over a random 4-band raster through the
   engine on the device: every pixel's label equals the per-pixel argmax computed on the CPU in
   float64, except where its top two logits are within 1e-4 (ties). Run three ways: one reader;
   four readers; four readers with a 1 MB budget for waiting pieces (most go through local disk).
2. The same engine runs, bf16/fp16 autocast (the GPU default), one reader against four readers with
   spills: identical labels (the hand-overs must not change a pixel).
3. 3D: the engine against MONAI ``sliding_window_inference`` on the device (same U-Net, windows,
   overlap, gaussian; float32, TF32 off): label agreement >= 99.99 %.
4. The demo CT end to end (``segment_volume``: reorientation, resampling, engine, write) on the
   device and on the CPU: label agreement and Dice against the phantom's truth.
5. The demo land-cover scene end to end (``segment_raster``, no regions) on the device and on the
   CPU: label agreement and mIoU against the truth.

Exit status 1 when any check fails. ``--device cpu`` runs the same checks CPU against CPU (how the
smoke test keeps the script working); ``--small`` uses small sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TIE = 1e-4


def no_tf32() -> None:
    """Full float32 matrix products and convolutions on the device (TF32 rounds to 10 bits)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def zarr_labels(shape: tuple[int, ...], block: tuple[int, ...], dtype: str = "uint8"):
    import zarr

    return zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=block, dtype=dtype, fill_value=0)


def per_pixel_checks(device: str, side: int, window: int, block: int) -> list[tuple[str, bool, str]]:
    """Checks 1 and 2: ``side`` pixels (about), ``window`` and ``block`` sides in pixels."""
    from pipeline.engine import EngineConfig, run_engine

    rng = np.random.default_rng(0)
    shape = (side + 137, side - 91)  # not a multiple of the block: edge blocks and padding
    image = rng.integers(0, 256, size=(4, *shape), dtype=np.uint8)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 6, kernel_size=1)
    with torch.no_grad():  # float64 reference on the CPU
        w = model.weight.double().reshape(6, 4).numpy()
        b = model.bias.double().numpy()
    logits = np.einsum("kc,cyx->kyx", w, image.astype(np.float64)) + b[:, None, None]
    expected = logits.argmax(axis=0)
    top2 = np.sort(logits, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > TIE

    rows = []
    block = (block, block)
    runs = {
        "one reader": {"readers": 1},
        "four readers": {"readers": 4},
        "four readers, pieces spilled": {"readers": 4, "pending_memory_mb": 1},
    }
    for name, extra in runs.items():
        out = zarr_labels(shape, block)
        config = EngineConfig(window=(window, window), overlap=0.25, block=block, device=device, precision="float32", **extra)
        report = run_engine(image, model, config, out)
        labels = out[...]
        wrong = int(np.count_nonzero((labels != expected) & decided))
        rows.append((f"2D per-pixel, float32, {name}", wrong == 0, f"{wrong} decided pixels differ of {labels.size:,}; "
                     f"{report.pieces_on_disk} pieces via disk; windows {report.windows_run}/{report.windows_total}"))

    results = []
    for extra in ({"readers": 1}, {"readers": 4, "pending_memory_mb": 1}):
        out = zarr_labels(shape, block)
        run_engine(image, model, EngineConfig(window=(window, window), overlap=0.25, block=block, device=device, **extra), out)
        results.append(out[...])
    differ = int(np.count_nonzero(results[0] != results[1]))
    rows.append(("2D autocast: one reader == four readers with spills", differ == 0, f"{differ} pixels differ"))
    return rows


def monai_check(device: str, side: int) -> tuple[str, bool, str]:
    """Check 3."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from pipeline.engine import EngineConfig, run_engine

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    volume = np.random.default_rng(1).normal(size=(1, side // 2, side, side - 16)).astype(np.float32)
    window, block = (32, 64, 64), (64, 64, 64)
    out = zarr_labels(volume.shape[1:], block)
    run_engine(volume, net, EngineConfig(window=window, overlap=0.5, block=block, device=device, precision="float32", batch_size=4), out)
    dev = torch.device(device)
    with torch.inference_mode():
        ref = sliding_window_inference(torch.from_numpy(volume)[None].to(dev), window, 4, net.to(dev), overlap=0.5, mode="gaussian")
    expected = ref[0].argmax(0).cpu().numpy()
    agree = float(np.mean(out[...] == expected))
    return ("3D engine vs MONAI sliding_window_inference, float32", agree >= 0.9999, f"{100 * agree:.4f} % of {expected.size:,} voxels agree")


def ct_check(device: str, small: bool, tmp: Path) -> tuple[str, bool, str]:
    """Check 4."""
    import nibabel as nib

    from models.spec import load_spec
    from pipeline.demo.metrics import confusion_matrix, dice_per_class
    from pipeline.demo.phantom import synthetic_ct, write_ct_nifti
    from pipeline.volume.options import VolumeOptions
    from pipeline.volume.run import segment_volume

    spec = load_spec("demo-ct")
    hu, truth, affine = synthetic_ct(11, (64, 96, 96) if small else (160, 256, 256))
    ct = write_ct_nifti(tmp / "ct.nii.gz", hu, affine)
    labels, dice = {}, {}
    for where in (device, "cpu"):
        result = segment_volume(ct, spec, tmp / f"ct-{where}", VolumeOptions(device=where))
        labels[where] = np.asarray(nib.load(str(result.outputs.labels)).dataobj).transpose(2, 1, 0)
        dice[where] = float(np.nanmean(dice_per_class(confusion_matrix(labels[where], truth, spec.class_ids))[1:]))
    agree = float(np.mean(labels[device] == labels["cpu"]))
    ok = agree >= 0.999 and abs(dice[device] - dice["cpu"]) < 0.005
    return ("demo CT end to end, device vs CPU", ok, f"{100 * agree:.3f} % voxels agree; mean Dice {dice[device]:.4f} vs CPU {dice['cpu']:.4f}")


def landcover_check(device: str, small: bool, tmp: Path) -> tuple[str, bool, str]:
    """Check 5."""
    import rasterio

    from models.spec import load_spec
    from pipeline.demo.metrics import confusion_matrix, iou_per_class
    from pipeline.demo.scene import synthetic_scene, write_scene_geotiff
    from pipeline.raster.run import segment_raster

    spec = load_spec("demo-landcover")
    size = (1024, 1024) if small else (4096, 4096)
    image, truth = synthetic_scene(2024, size)
    scene = write_scene_geotiff(tmp / "scene.tif", image)
    labels, miou = {}, {}
    for where in (device, "cpu"):
        result = segment_raster(scene, spec, tmp / f"scene-{where}", device=where)
        with rasterio.open(result.labels_path) as src:
            labels[where] = src.read(1)
        miou[where] = float(np.nanmean(iou_per_class(confusion_matrix(labels[where], truth, spec.class_ids))))
    agree = float(np.mean(labels[device] == labels["cpu"]))
    ok = agree >= 0.999 and abs(miou[device] - miou["cpu"]) < 0.005
    return ("demo land cover end to end, device vs CPU", ok, f"{100 * agree:.3f} % pixels agree; mIoU {miou[device]:.4f} vs CPU {miou['cpu']:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small sizes (the CPU smoke test)")
    args = parser.parse_args()
    no_tf32()
    if args.device.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="segpipe-gpu-check-") as tmp:
        for check in (
            lambda: per_pixel_checks(args.device, *((640, 128, 256) if args.small else (3000, 512, 1024))),
            lambda: [monai_check(args.device, 96 if args.small else 192)],
            lambda: [ct_check(args.device, args.small, Path(tmp))],
            lambda: [landcover_check(args.device, args.small, Path(tmp))],
        ):
            t0 = time.perf_counter()
            for name, ok, detail in check():
                rows.append((name, ok))
                print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail} ({time.perf_counter() - t0:.1f} s)", flush=True)
    failed = [name for name, ok in rows if not ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
