"""End to end `segpipe raster` and `segpipe volume` on synthetic demo data: wall time per stage.

    python bench/end_to_end.py [--scene 2048] [--ct 128 192 192] [--device cpu] [--only volume] [--warm-up]

Raster: a synthetic 4-band scene (pipeline/demo/scene.py) through demo-landcover with district
regions. Volume: a synthetic CT phantom (pipeline/demo/phantom.py) through demo-ct. Prints, for
each, the stages (load model, read/ingest, segment, write, statistics, quicklook) and the engine's
own split (model forward, stitching, background read and write), with shares of the wall time.
``--warm-up`` segments the CT once untimed first (CUDA context, cuDNN plans, allocator pools: what
a batch pays once, not per study). ``--only volume`` needs no regions (geopandas), as on the GPU kit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def table(title: str, wall: float, stages: dict[str, float], engine) -> None:
    print(f"\n{title}: {wall:.2f} s wall")
    print(f"  {'stage':<22}{'seconds':>9}{'share':>8}")
    for name, seconds in stages.items():
        print(f"  {name:<22}{seconds:>9.2f}{100 * seconds / wall:>7.0f}%")
    rest = wall - sum(stages.values())
    print(f"  {'other':<22}{rest:>9.2f}{100 * rest / wall:>7.0f}%")
    print(f"  engine: model {engine.seconds_model:.2f} s, stitch {engine.seconds_stitch:.2f} s, "
          f"read {engine.seconds_read:.2f} s and write {engine.seconds_write:.2f} s (background threads), "
          f"windows {engine.windows_run}/{engine.windows_total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", type=int, default=2048, help="scene side in pixels")
    parser.add_argument("--ct", type=int, nargs=3, default=[128, 192, 192], help="phantom shape Z Y X")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=["raster", "volume"], help="run one of the two (default: both)")
    parser.add_argument("--warm-up", action="store_true", help="segment the CT once, untimed, before the timed run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="segpipe-e2e-") as tmp:
        if args.only != "volume":
            raster(Path(tmp), args.scene, args.device)
        if args.only != "raster":
            volume(Path(tmp), tuple(args.ct), args.device, args.warm_up)


def raster(tmp: Path, side: int, device: str) -> None:
    from pipeline.demo.scene import synthetic_scene, write_regions_geojson, write_scene_geotiff
    from pipeline.raster.run import segment_raster

    size = (side, side)
    image, _ = synthetic_scene(7, size)
    scene = write_scene_geotiff(tmp / "scene.tif", image)
    regions = write_regions_geojson(tmp / "districts.geojson", size)
    t0 = time.perf_counter()
    result = segment_raster(scene, "demo-landcover", tmp / "raster", regions=regions, device=device)
    table(f"segpipe raster {side}x{side}x4 (demo-landcover)", time.perf_counter() - t0, result.timings, result.engine)


def volume(tmp: Path, shape: tuple[int, int, int], device: str, warm_up: bool) -> None:
    from models.spec import load_spec
    from pipeline.demo.phantom import synthetic_ct, write_ct_nifti
    from pipeline.volume.options import VolumeOptions
    from pipeline.volume.run import segment_volume

    hu, _, affine = synthetic_ct(11, shape)
    ct = write_ct_nifti(tmp / "ct.nii.gz", hu, affine)
    spec, options = load_spec("demo-ct"), VolumeOptions(device=device, force=True)
    if warm_up:
        segment_volume(ct, spec, tmp / "volume-warm-up", options)
    t0 = time.perf_counter()
    result = segment_volume(ct, spec, tmp / "volume", options)
    table(f"segpipe volume {shape} (demo-ct){' after a warm-up run' if warm_up else ''}", time.perf_counter() - t0, result.timings, result.engine)


if __name__ == "__main__":
    main()
