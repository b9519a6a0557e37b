"""The ``landcover`` flow with a scene that another run is segmenting into the same output folder
(its lock held, pipeline.work_lock): that scene fails with the lock's InputError and the
other scenes finish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from flows.landcover import landcover
from pipeline.work_lock import work_lock

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")]

WEIGHT = np.array([[0.0, 0, 0], [0, 1, 0], [0, 0, 1]])
BIAS = np.array([0.0, -100.0, -200.0])


def _write_scene(path: Path, seed: int) -> Path:
    image = np.random.default_rng(seed).integers(0, 400, (3, 40, 56), dtype=np.uint16)
    profile = {"driver": "GTiff", "width": 56, "height": 40, "count": 3, "dtype": "uint16", "crs": "EPSG:32633",
               "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_350_000.0)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def test_a_locked_scene_fails_alone(tmp_path, pointwise_spec):
    spec = pointwise_spec(tmp_path / "model", task="raster", weight=WEIGHT, bias=BIAS, classes=[(0, "a"), (1, "b"), (2, "c")], window=[16, 16])
    west, east = _write_scene(tmp_path / "west.tif", 1), _write_scene(tmp_path / "east.tif", 2)
    out = tmp_path / "out"
    with work_lock(out / ".work", "west", subject=west, out_dir=out):
        report = landcover(scenes=[str(west), str(east)], model=str(spec), out=str(out), device="cpu", block=32)
    assert [o.name for o in report.outputs] == ["east"]
    assert [(f.item, f.error) for f in report.failures] == [(str(west), "InputError")]
    assert "another segpipe run is segmenting this scene into this folder" in report.failures[0].message
    assert (out / "east.labels.tif").is_file() and not (out / "west.labels.tif").exists()
