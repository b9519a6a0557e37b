"""Two `segpipe raster` processes writing into the same output folder at once do not corrupt each
other: both label COGs are complete and stats.zarr holds both scenes' areas."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from safetensors.torch import save_file


@pytest.mark.slow
def test_two_runs_into_one_output_root(tmp_path, make_geotiff):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 1)
    save_file(conv.state_dict(), str(tmp_path / "pp.safetensors"))
    spec = {
        "name": "pp", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 3, "out_channels": 3, "kernel_size": 1}, "in_channels": 3,
        "classes": [{"id": i, "name": f"c{i}"} for i in range(3)], "window": [64, 64], "checkpoint": "pp.safetensors",
    }
    (tmp_path / "pp.yaml").write_text(json.dumps(spec))
    rng = np.random.default_rng(1)
    scenes = [make_geotiff(tmp_path / f"s{i}.tif", rng.integers(0, 255, (3, 300 + 50 * i, 280), dtype=np.uint8)) for i in range(2)]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", "raster", str(s), "--model", str(tmp_path / "pp.yaml"),
                          "--out", str(out), "--block", "128", "--device", "cpu", "--time", "2026-11-22T02:00"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for s in scenes
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]

    for i, s in enumerate(scenes):
        with rasterio.open(s) as src, rasterio.open(out / f"s{i}.labels.tif") as dst:
            assert (dst.width, dst.height, dst.transform, dst.crs) == (src.width, src.height, src.transform, src.crs)
            with torch.no_grad():
                logits = conv(torch.from_numpy(src.read().astype(np.float32))[None])[0].numpy()
            assert (dst.read(1) == logits.argmax(0)).mean() > 0.9999
    stats = xr.open_zarr(out / "stats.zarr")
    assert sorted(stats["scene"].values.tolist()) == ["s0", "s1"]
    areas = stats["area_m2"].sel(time=np.datetime64("2026-11-22T02:00")).sum("class")
    assert np.allclose(sorted(areas.sum("region").values), [280 * 300 * 100, 280 * 350 * 100], rtol=1e-3)
