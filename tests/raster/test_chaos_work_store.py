"""A work store damaged between a killed run and its resume (a chunk lost or truncated, an array's
metadata broken) is never read back as data: the damaged blocks are segmented again, or the scene
ingested again, and the outputs equal an uninterrupted run's.

Before: a finished block whose labels chunk was missing came back as class 0 (and its areas with
it), a missing ``mask`` chunk as nodata, both looking complete; a truncated chunk or a broken
``zarr.json`` failed every later run with a raw codec or JSON error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from safetensors.torch import save_file

from pipeline.errors import InputError
from pipeline.raster.run import segment_raster
from pipeline.stats_store import open_stats

TIME = "2026-01-01T00:00:00"


def _spec(folder: Path) -> Path:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 3, 1)
    torch.nn.init.normal_(conv.weight)
    save_file(conv.state_dict(), str(folder / "pp.safetensors"))
    spec = {
        "name": "pp", "task": "raster", "architecture": "torch.nn:Conv2d", "params": {"in_channels": 4, "out_channels": 3, "kernel_size": 1},
        "in_channels": 4, "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}],
        "window": [64, 64], "overlap": 0.25, "normalize": {"kind": "scale", "factor": 0.01}, "checkpoint": "pp.safetensors",
    }
    path = folder / "pp.yaml"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chaos-work")
    image = np.random.default_rng(0).integers(1, 255, (4, 300, 350), dtype=np.uint8)
    image[:, :128, 256:] = 0  # block (0, 2) holds no valid pixel: done without a labels chunk, never "damaged"
    tif = folder / "s.tif"
    profile = {"driver": "GTiff", "width": 350, "height": 300, "count": 4, "dtype": "uint8", "crs": "EPSG:32633", "nodata": 0}
    with rasterio.open(tif, "w", transform=Affine(10, 0, 500000, 0, -10, 6000000), photometric="MINISBLACK", **profile) as dst:
        dst.write(image)
    spec = _spec(folder)
    ref = segment_raster(tif, spec, folder / "ref", block=128, device="cpu", time=TIME)
    with rasterio.open(ref.labels_path) as src:
        labels = src.read(1)
    kept = folder / "kept"  # a work store whose every block is finished: a run killed after the engine, before its outputs
    segment_raster(tif, spec, kept, block=128, device="cpu", time=TIME, keep_work=True)
    return tif, spec, labels, open_stats(ref.stats_path), kept / ".work"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "labels chunk missing": lambda w: (w / "labels" / "c" / "1" / "1").unlink(),
    "labels chunk truncated": lambda w: _truncate(w / "labels" / "c" / "1" / "1"),
    "done chunk truncated": lambda w: _truncate(w / "labels_done" / "c" / "1" / "1"),
    "mask chunk missing": lambda w: (w / "mask" / "c" / "1" / "1").unlink(),
    "image chunk missing": lambda w: [(w / name).unlink() for name in ("image/c/0/1/1", "labels_done/c/1/1")],  # and its block unfinished
    "labels metadata truncated": lambda w: _truncate(w / "labels" / "zarr.json"),
    "image metadata missing": lambda w: (w / "image" / "zarr.json").unlink(),
}


SLOW = {"done chunk truncated", "image chunk missing", "labels metadata truncated", "image metadata missing"}


@pytest.mark.parametrize("damage", [pytest.param(d, marks=pytest.mark.slow) if d in SLOW else d for d in DAMAGE])
def test_a_damaged_work_store_is_redone_not_read_back(scene, tmp_path, damage):
    tif, spec, reference, reference_stats, work = scene
    out = tmp_path / "out"
    shutil.copytree(work, out / ".work")
    DAMAGE[damage](out / ".work" / "s.zarr")

    result = segment_raster(tif, spec, out, block=128, device="cpu", time=TIME)

    with rasterio.open(result.labels_path) as src:
        assert np.array_equal(src.read(1), reference)
    stats = open_stats(result.stats_path)
    assert np.array_equal(stats["area_m2"].values, reference_stats["area_m2"].values, equal_nan=True)
    assert np.array_equal(stats["nodata_pixel_count"].values, reference_stats["nodata_pixel_count"].values)
    if damage.startswith(("labels chunk", "done chunk")):  # only the damaged block and the windows it needs are redone
        assert 0 < result.engine.blocks_run < 9
    assert not (out / ".work").exists()


def test_an_intact_work_store_resumes_with_nothing_redone(scene, tmp_path, caplog):
    tif, spec, reference, _, work = scene
    out = tmp_path / "out"
    shutil.copytree(work, out / ".work")
    result = segment_raster(tif, spec, out, block=128, device="cpu", time=TIME)
    assert result.engine.blocks_run == 0
    assert "damaged" not in caplog.text  # the block without a valid pixel has no labels chunk, and that is no damage
    with rasterio.open(result.labels_path) as src:
        assert np.array_equal(src.read(1), reference)


def test_a_work_store_left_after_the_scene_was_done_is_removed_by_the_next_run(scene, tmp_path, monkeypatch):
    """Killed after the statistics entry (the scene is done) but before the work store was removed:
    the next run skips the scene and removes the store. Before: skipped, the store (the whole
    ingested image) stayed for good."""
    import pipeline.raster.run as run

    tif, spec, reference, _, _ = scene
    out = tmp_path / "out"
    real = run.shutil.rmtree

    def killed(path, *args, **kwargs):
        if Path(path).name == "s.zarr":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(run.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        segment_raster(tif, spec, out, block=128, device="cpu", time=TIME)
    monkeypatch.undo()
    assert (out / "s.labels.tif").is_file() and (out / ".work" / "s.zarr").is_dir()

    again = segment_raster(tif, spec, out, block=128, device="cpu", time=TIME)

    assert again.skipped
    assert not (out / ".work").exists()


def test_an_output_folder_removed_mid_run_is_reported_as_such_and_the_next_run_works(scene, tmp_path):
    """``--out`` deleted (or moved) while the engine writes: the error names the folder, the problem
    and the fix. Before: "unexpected GroupNotFoundError: No group found in store ...". The engine's
    writer may recreate part of the work store on its way out; the next run discards it."""
    tif, spec, reference, _, _ = scene
    out = tmp_path / "parent" / "out"

    def remove_parent(stage: str, done: int, total: int) -> None:
        if stage == "segment" and done == 2:
            shutil.rmtree(tmp_path / "parent")

    with pytest.raises(InputError) as caught:
        segment_raster(tif, spec, out, block=128, device="cpu", time=TIME, progress=remove_parent)
    assert caught.value.path == str(out)
    assert "disappeared while this run was writing it" in caught.value.problem
    assert caught.value.fix == "keep --out in place until the run ends, then run again"

    result = segment_raster(tif, spec, out, block=128, device="cpu", time=TIME)
    with rasterio.open(result.labels_path) as src:
        assert np.array_equal(src.read(1), reference)
