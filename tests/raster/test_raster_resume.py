"""A `segpipe raster` run killed with SIGKILL midway resumes without redoing finished blocks and
ends with outputs identical to an uninterrupted run; nothing half-written looks complete.

Resume reruns only the windows of blocks that still feed an unfinished block: the finished blocks
next to the frontier (at most one row of blocks), never the rows behind it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from monai.networks.nets import UNet
from safetensors.torch import save_file

from pipeline.raster.run import segment_raster


def _unet_spec(folder: Path) -> Path:
    params = {"spatial_dims": 2, "in_channels": 4, "out_channels": 3, "channels": [16, 32], "strides": [2], "num_res_units": 1}
    torch.manual_seed(3)
    save_file(UNet(**params).state_dict(), str(folder / "unet.safetensors"))
    spec = {
        "name": "resume-unet", "task": "raster", "architecture": "monai.networks.nets:UNet", "params": params,
        "in_channels": 4, "classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 7, "name": "c"}],
        "window": [128, 128], "overlap": 0.5, "normalize": {"kind": "scale", "factor": 0.01}, "checkpoint": "unet.safetensors",
    }
    path = folder / "resume-unet.yaml"
    path.write_text(json.dumps(spec))
    return path


def _done_blocks(work: Path) -> int:
    try:
        return int(zarr.open_array(str(work), path="labels_done", mode="r")[...].sum())
    except Exception:  # store or array not there yet
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, make_geotiff):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024]
    base = 100 + 80 * np.sin(yy / 60.0) * np.cos(xx / 45.0)
    image = np.stack([base + rng.normal(0, 10, base.shape) * (b + 1) for b in range(4)]).clip(0, 255).astype(np.uint8)
    scene = make_geotiff(tmp_path / "scene.tif", image, photometric="MINISBLACK")  # 4 data bands, not GDAL's default RGB + alpha
    spec = _unet_spec(tmp_path)

    reference = segment_raster(scene, spec, tmp_path / "ref", block=256, device="cpu")

    out = tmp_path / "killed"
    work = out / ".work" / "scene.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "raster", str(scene), "--model", str(spec), "--out", str(out), "--block", "256", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while _done_blocks(work) < 9:  # rows 0 and 1 of the 4 x 4 block grid finished
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no block finished in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()  # else an "unclosed file" ResourceWarning lands in whichever test collects it
    done_at_kill = _done_blocks(work)
    assert 9 <= done_at_kill < 16
    assert not (out / "scene.labels.tif").exists()  # nothing that looks complete
    assert not (out / "stats.zarr").exists()

    resumed = segment_raster(scene, spec, out, block=256, device="cpu", time=reference.stats.attrs.get("time"))
    assert resumed.engine.blocks_skipped >= done_at_kill
    assert resumed.engine.blocks_run < 16
    assert resumed.engine.windows_run < resumed.engine.windows_total
    with rasterio.open(reference.labels_path) as a, rasterio.open(resumed.labels_path) as b:
        assert np.array_equal(a.read(1), b.read(1))
        assert a.transform == b.transform and a.crs == b.crs
    assert np.allclose(reference.stats["area_m2"].values, resumed.stats["area_m2"].values)
