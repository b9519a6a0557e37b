"""Raster scaling with a per-pixel model (so I/O and stitching dominate), against the I/O limit.

For each size, a synthetic 4-band uint8 GeoTIFF (tiled, UTM) is segmented by ``segment_raster`` in
a fresh process (peak RSS = that process's VmHWM), and the same raster is read with plain
rasterio and written as a 1-band uint8 COG (the I/O limit, also a fresh process).

    python bench/raster_scaling.py --sizes 4096 16384 [32768] [--block 1024] [--keep DIR]
    python bench/raster_scaling.py --sizes 5000 100000 --noise 2 --no-io-limit   # the mission's "any size" claim

``--noise`` sets the per-pixel noise amplitude (default 24; 2 makes a 100,000^2 scene ~12 GB on disk
instead of ~30 GB); ``--no-io-limit`` skips the plain-rasterio job (memory, not throughput, is the point
at 100,000^2).

Prints a table and the ratios: pipeline throughput / I/O-limit throughput, RSS(largest)/RSS(smallest),
and seconds per Mpx relative to the smallest size (time linear in pixels).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def make_raster(path: Path, side: int, noise: int = 24) -> None:
    """Smooth fields plus noise in ``[0, noise)``, written 1024 rows at a time (bounded memory)."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=side, height=side, count=4, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 5800000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="IF_SAFER", photometric="MINISBLACK", num_threads="ALL_CPUS")  # band 4 is data, not alpha
    rng = np.random.default_rng(side)
    x = np.linspace(0, side / 300, side, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, side, 1024):
            rows = min(1024, side - y0)
            yy = (np.arange(y0, y0 + rows, dtype=np.float32) / 300)[:, None]
            base = 100 + 60 * np.sin(yy) * np.cos(x[None, :])
            for band in range(4):
                jitter = rng.integers(0, noise, size=(rows, side), dtype=np.uint8)
                dst.write((base * (0.6 + 0.2 * band) + jitter).astype(np.uint8), band + 1,
                          window=rasterio.windows.Window(0, y0, side, rows))


def write_spec(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 5, 1)
    save_file(conv.state_dict(), str(folder / "perpixel.safetensors"))
    spec = {
        "name": "bench-perpixel", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 4, "out_channels": 5, "kernel_size": 1}, "in_channels": 4,
        "classes": [{"id": i, "name": f"c{i}"} for i in range(5)], "window": [512, 512], "overlap": 0.25,
        "normalize": {"kind": "scale", "factor": 1 / 255}, "checkpoint": "perpixel.safetensors",
    }
    path = folder / "perpixel.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB. Not ``ru_maxrss``: Linux starts a child's
    ``ru_maxrss`` at its parent's peak (it is carried over at exec), so the parent's own work
    (making the raster) showed up as the job's peak (16k^2: 1463 MB against 890 MB measured alone)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def job_pipeline(image: str, spec: str, out: str, block: int) -> dict:
    from pipeline.memory import limit_malloc_arenas
    from pipeline.raster.run import segment_raster
    from pipeline.timing import Stopwatch

    limit_malloc_arenas()  # as `segpipe` does
    peaks: dict[str, float] = {}
    stage = Stopwatch.stage

    def stage_with_peak(self, name):  # the process's peak RSS when each stage ends (it only grows)
        with stage(self, name):
            yield
        peaks[name] = peak_rss_mb()

    Stopwatch.stage = contextlib.contextmanager(stage_with_peak)

    t0 = time.perf_counter()
    result = segment_raster(image, spec, out, block=block, device="cpu")
    seconds = time.perf_counter() - t0
    e = result.engine
    return {"block": block, "seconds": seconds, "engine": e.seconds, "model": e.seconds_model, "stitch": e.seconds_stitch,
            "read": e.seconds_read, "write": e.seconds_write, "stages": result.timings, "peaks": peaks}


def job_io_limit(image: str, out: str, block: int) -> dict:
    """Plain rasterio: read every block of all bands, write one uint8 band as a tiled GTiff, build overviews, copy to COG."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as rio_copy
    from rasterio.windows import Window

    t0 = time.perf_counter()
    tmp = Path(out) / "io.tmp.tif"
    with rasterio.open(image) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
        with rasterio.open(tmp, "w", **profile) as dst:
            for y0 in range(0, src.height, block):
                for x0 in range(0, src.width, block):
                    w = Window(x0, y0, min(block, src.width - x0), min(block, src.height - y0))
                    data = src.read(window=w)
                    dst.write(data[0], 1, window=w)
            dst.build_overviews([2, 4, 8, 16, 32], Resampling.nearest)
    rio_copy(tmp, Path(out) / "io.cog.tif", driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, BIGTIFF="IF_SAFER")
    tmp.unlink()
    return {"seconds": time.perf_counter() - t0}


def run_job(*args: str) -> dict:
    """Run one job in a fresh process; returns its result with its peak RSS in MB."""
    proc = subprocess.run([sys.executable, __file__, "--job", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"job {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder, removed)")
    parser.add_argument("--noise", type=int, default=24, help="per-pixel noise amplitude of the synthetic scenes (default 24)")
    parser.add_argument("--no-io-limit", action="store_true", help="skip the plain-rasterio I/O-limit job")
    parser.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        kind, *rest = args.job
        result = job_pipeline(rest[0], rest[1], rest[2], int(rest[3])) if kind == "pipeline" else job_io_limit(rest[0], rest[1], int(rest[2]))
        result["rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    with contextlib.ExitStack() as stack:
        folder = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segpipe-bench-")))
        folder.mkdir(parents=True, exist_ok=True)
        rows = measure(folder, args.sizes, args.block, noise=args.noise, io_limit=not args.no_io_limit)
    report(rows, args.sizes)


def measure(folder: Path, sizes: list[int], block: int, noise: int = 24, io_limit: bool = True) -> list[tuple[int, dict | None, dict]]:
    """Make each raster (once) and run the I/O-limit (unless ``io_limit`` is False) and pipeline jobs on it."""
    spec = write_spec(folder)
    rows = []
    for side in sizes:
        image = folder / f"scene{side}-noise{noise}.tif"
        if not image.exists():
            t0 = time.perf_counter()
            make_raster(image, side, noise)
            print(f"  made {image.name}: {image.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        out = folder / f"out{side}"
        out.mkdir(exist_ok=True)
        io = run_job("io", str(image), str(out), str(block)) if io_limit else None
        pipe = run_job("pipeline", str(image), str(spec), str(out), str(block))
        rows.append((side, io, pipe))
        io_text = f"{io['seconds']:.1f}s" if io else "skipped"
        print(f"  done {side}: pipeline {pipe['seconds']:.1f}s, io limit {io_text}", file=sys.stderr)
    return rows


def report(rows: list[tuple[int, dict | None, dict]], sizes: list[int]) -> None:
    block = rows[0][2].get("block", "?")
    print(f"block {block}, per-pixel Conv2d 4->5, window 512, overlap 0.25, CPU threads default")
    print(f"{'size':>12}{'Mpx':>8}{'pipe s':>9}{'Mpx/s':>8}{'RSS MB':>8}{'io s':>8}{'io Mpx/s':>9}{'% of io':>9}"
          f"{'engine s':>9}{'model s':>8}{'stitch s':>9}{'read s':>8}{'write s':>8}{'s/Mpx rel':>10}")
    base = None
    for side, io, pipe in rows:
        mpx = side * side / 1e6
        per = pipe["seconds"] / mpx
        base = base or per
        io_cols = (f"{io['seconds']:>8.1f}{mpx / io['seconds']:>9.2f}{100 * io['seconds'] / pipe['seconds']:>8.0f}%" if io
                   else f"{'-':>8}{'-':>9}{'-':>9}")
        print(f"{side:>6}x{side:<5}{mpx:>8.1f}{pipe['seconds']:>9.1f}{mpx / pipe['seconds']:>8.2f}{pipe['rss_mb']:>8.0f}{io_cols}"
              f"{pipe['engine']:>9.1f}{pipe['model']:>8.1f}{pipe['stitch']:>9.1f}{pipe['read']:>8.1f}{pipe['write']:>8.1f}{per / base:>10.2f}")
    small, large = rows[0][2]["rss_mb"], rows[-1][2]["rss_mb"]
    print("wall seconds per stage of the pipeline runs:")
    for side, _, pipe in rows:
        print(f"  {side}^2: " + ", ".join(f"{k} {v:.1f}" for k, v in pipe["stages"].items()))
    print("peak RSS (MB) of the pipeline process when each stage ended:")
    for side, _, pipe in rows:
        print(f"  {side}^2: " + ", ".join(f"{k} {v:.0f}" for k, v in pipe["peaks"].items()))
    print(f"peak RSS {sizes[-1]} / {sizes[0]} = {large / small:.2f}  (target <= 1.5)")
    if len(rows) >= 2:
        (s1, _, p1), (s2, _, p2) = rows[-2], rows[-1]
        linear = (p2["seconds"] / s2**2) / (p1["seconds"] / s1**2)
        print(f"s/Mpx at {s2} / s/Mpx at {s1} = {linear:.2f}  (time linear in pixels: within 0.85..1.15)")
    print("read/write run on background threads and overlap the model and stitching; "
          "pipe s - engine s = ingest + COG + statistics + quicklook + start-up")


if __name__ == "__main__":
    main()
