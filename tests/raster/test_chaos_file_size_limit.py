"""An output that the file system (FAT32's 4 GB) or ``ulimit -f`` refuses to grow is reported as the
output folder's problem, with the fix, and the failed run leaves nothing that looks complete; the
next run with room works. Before: "unexpected OSError: [Errno 27] File too large", naming the input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from safetensors.torch import save_file

from pipeline.errors import InputError
from pipeline.raster.run import segment_raster


def _raster_inputs(folder: Path) -> tuple[Path, Path]:
    image = np.random.default_rng(1).integers(1, 255, (4, 256, 256), dtype=np.uint8)
    tif = folder / "s.tif"
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": 4, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(tif, "w", transform=Affine(10, 0, 500000, 0, -10, 6000000), photometric="MINISBLACK", **profile) as dst:
        dst.write(image)
    torch.manual_seed(0)
    save_file(torch.nn.Conv2d(4, 3, 1).state_dict(), str(folder / "pp.safetensors"))
    spec = folder / "pp.yaml"
    spec.write_text(json.dumps({
        "name": "pp", "task": "raster", "architecture": "torch.nn:Conv2d", "params": {"in_channels": 4, "out_channels": 3, "kernel_size": 1},
        "in_channels": 4, "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}],
        "window": [64, 64], "overlap": 0.25, "normalize": {"kind": "scale", "factor": 0.01}, "checkpoint": "pp.safetensors",
    }))
    return tif, spec


def test_raster_output_past_the_file_size_limit_names_the_folder_and_the_fix(tmp_path, file_size_limit):
    tif, spec = _raster_inputs(tmp_path)
    out = tmp_path / "out"
    with file_size_limit(20_000), pytest.raises(InputError) as caught:  # the work store's chunks fit, the quicklook does not
        segment_raster(tif, spec, out, block=128, device="cpu")
    assert caught.value.path == str(out)
    assert caught.value.problem.startswith("file too large")
    assert "ulimit -f" in caught.value.fix
    assert not (out / "s.labels.tif").exists() and not (out / "stats.zarr").exists()

    result = segment_raster(tif, spec, out, block=128, device="cpu")
    assert result.labels_path.is_file() and result.stats_path.is_dir()
