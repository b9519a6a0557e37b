"""Inputs refused before any work (complex data, GCP/RPC georeferencing), failures that leave no
output looking complete, and `segpipe -v raster` showing the traceback of an unexpected error."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
import yaml
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from safetensors.torch import save_file

from models.spec import spec_from_dict
from pipeline.errors import InputError
from pipeline.raster.ingest import probe_raster
from pipeline.raster.run import segment_raster

REPO = Path(__file__).resolve().parents[2]
CLASSES = [{"id": 0, "name": "water", "color": "#1f78b4"}, {"id": 1, "name": "forest", "color": "#33a02c"}]
RAW_SPEC = {
    "name": "per-pixel", "task": "raster", "architecture": "torch.nn:Conv2d", "params": {"in_channels": 3, "out_channels": 2, "kernel_size": 1},
    "in_channels": 3, "classes": CLASSES, "window": [32, 32], "overlap": 0.25, "normalize": {"kind": "none"},
}


def model() -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
    return conv.eval()


def spec_file(folder: Path) -> Path:
    save_file(model().state_dict(), str(folder / "pp.safetensors"))
    (folder / "pp.yaml").write_text(yaml.safe_dump({**RAW_SPEC, "checkpoint": "pp.safetensors"}))
    return folder / "pp.yaml"


def scene(tmp_path, make_geotiff, name="scene.tif"):
    data = np.random.default_rng(0).integers(1, 255, (3, 40, 56), dtype=np.uint8)
    return make_geotiff(tmp_path / name, data)


# --- complex data: refused in probe_raster, before anything is written ---


@pytest.mark.parametrize("dtype", ["complex64", "complex_int16"])
def test_complex_raster_is_refused_before_any_work(tmp_path, dtype):
    tif = tmp_path / "slc.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=20, height=20, count=3, dtype=dtype, crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 6000000, 10, 10)) as dst:
        if dtype == "complex64":
            dst.write((np.ones((3, 20, 20)) * (1 + 2j)).astype(dtype))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"slc\.tif: band 1 holds complex values \({dtype}.*the models take real values.*magnitude.*abs\(A\)"):
        segment_raster(tif, spec_from_dict(RAW_SPEC), out, block=32, device="cpu", model=model())
    assert not out.exists()


# --- georeferenced by GCPs or RPCs: the fix is to warp it to a grid ---


def test_gcp_raster_is_refused_with_gdalwarp_as_the_fix(tmp_path):
    gcps = [GroundControlPoint(0, 0, 20.0, 60.0), GroundControlPoint(0, 100, 20.1, 60.01), GroundControlPoint(100, 0, 19.99, 59.95),
            GroundControlPoint(100, 100, 20.09, 59.96)]
    tif = tmp_path / "gcps.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tif, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint16", gcps=gcps, crs=CRS.from_epsg(4326)) as dst:
            dst.write(np.ones((3, 100, 100), dtype=np.uint16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as error:
            probe_raster(tif)
    message = str(error.value)
    assert "georeferenced by 4 ground control points (GCPs)" in message and "not on a regular grid" in message
    assert "gdalwarp -r near" in message and "gdal_edit" not in message
    assert [str(w.message) for w in caught] == []


def test_rpc_raster_is_refused_with_gdalwarp_rpc_as_the_fix(tmp_path):
    from rasterio.rpc import RPC

    rpc = RPC(height_off=0, height_scale=100, lat_off=60, lat_scale=0.1, line_den_coeff=[1] + [0] * 19, line_num_coeff=[0, 0, -1] + [0] * 17,
              line_off=50, line_scale=50, long_off=20, long_scale=0.1, samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18,
              samp_off=50, samp_scale=50)
    tif = tmp_path / "rpc.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tif, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8", rpcs=rpc) as dst:
            dst.write(np.ones((1, 100, 100), dtype=np.uint8))
    with pytest.raises(InputError, match=r"rational polynomial coefficients \(RPCs\).*gdalwarp -rpc -r near"):
        probe_raster(tif)


# --- a scene that fails late leaves no output that looks complete ---


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("stage", ["write_quicklook", "append_stats", "compute_stats"])
def test_a_late_failure_leaves_no_label_cog_quicklook_or_stats_entry(tmp_path, make_geotiff, monkeypatch, stage):
    from pipeline.raster import publish

    tif = scene(tmp_path, make_geotiff)
    out = tmp_path / "out"
    segment_raster(tif, spec_from_dict(RAW_SPEC), out, block=32, device="cpu", model=model(), time="2024-06-01")  # an earlier night
    before = {name: (out / name).read_bytes() for name in ("scene.labels.tif", "scene.quicklook.png")}

    def broken(*args, **kwargs):
        raise RuntimeError(f"{stage} broke")

    monkeypatch.setattr(publish, stage, broken)
    with pytest.raises(RuntimeError, match="broke"):
        segment_raster(tif, spec_from_dict(RAW_SPEC), out, block=32, device="cpu", model=model(), time="2024-06-02")
    assert list(xr.open_zarr(out / "stats.zarr").time.values.astype("datetime64[D]").astype(str)) == ["2024-06-01"]
    leftovers = [n for n in _names(out) if n not in {".work", "stats.zarr", "scene.labels.tif", "scene.labels.tif.aux.xml", "scene.quicklook.png"}]
    assert leftovers == []  # no temporaries
    if stage == "append_stats":  # renamed into place, then the entry failed: this night's files are removed
        assert "scene.labels.tif" not in _names(out) and "scene.quicklook.png" not in _names(out)
    else:  # failed before the renames: the earlier night's outputs are untouched
        assert {name: (out / name).read_bytes() for name in before} == before


def test_first_run_failing_in_the_quicklook_writes_nothing_that_looks_done(tmp_path, make_geotiff, monkeypatch):
    from pipeline.raster import publish

    def broken(*args, **kwargs):
        raise ValueError("quicklook broke")

    monkeypatch.setattr(publish, "write_quicklook", broken)
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        segment_raster(scene(tmp_path, make_geotiff), spec_from_dict(RAW_SPEC), out, block=32, device="cpu", model=model(), time="2024-06-01")
    assert _names(out) == [".work"]  # the work store, for the resume; no label COG, .aux.xml, quicklook or stats.zarr


def test_next_run_removes_staged_outputs_of_a_killed_run(tmp_path, make_geotiff):
    tif = scene(tmp_path, make_geotiff)
    out = tmp_path / "out"
    out.mkdir()
    stale = ["scene.labels.tif.tmp-0123abcd", "scene.labels.tif.tmp-0123abcd.aux.xml", ".scene.labels.tif.tmp-0123abcd.4567cdef.cog.tif",
             ".scene.labels.tif.0123abcd.tmp.tif", "scene.quicklook.png.tmp-89abcdef", ".scene.quicklook.png.tmp-89abcdef.0123abcd.png"]
    for name in stale:
        (out / name).write_bytes(b"half written")
    kept = ["other.labels.tif.tmp-0123abcd", "scene.labels.tif.tmp-mine", ".scene.labels.tif.notes"]  # another scene's, the user's
    for name in kept:
        (out / name).write_bytes(b"not this run's")
    segment_raster(tif, spec_from_dict(RAW_SPEC), out, block=32, device="cpu", model=model(), time="2024-06-01")
    assert _names(out) == sorted([*kept, "scene.labels.tif", "scene.labels.tif.aux.xml", "scene.quicklook.png", "stats.zarr"])


# --- `segpipe -v raster`: an unexpected error's traceback ---

BOOM = """
import sys
import pipeline.raster.run as run

def boom(*args, **kwargs):
    raise TypeError("boom from a test")

run.segment_raster = boom
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [True, False])
def test_cli_unexpected_error_shows_its_traceback_with_v(tmp_path, make_geotiff, verbose):
    tif = scene(tmp_path, make_geotiff)
    args = ["raster", str(tif), "--model", str(spec_file(tmp_path)), "--out", str(tmp_path / "out"), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", BOOM, *(["-v"] if verbose else []), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert "unexpected TypeError: boom from a test (run with -v for the traceback)" in done.stderr
    assert ("Traceback (most recent call last)" in done.stderr) is verbose
    if verbose:
        assert ", in boom" in done.stderr and "\nTypeError: boom from a test" in done.stderr
