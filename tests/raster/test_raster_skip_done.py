"""A retried run (same ``--time``) skips the scenes it finished: the entry, label COG and quicklook
are there and were made from the same input, model, checkpoint, regions and bands. Anything else
redoes the scene. Real GeoTIFFs, real runs with a per-pixel model."""

from __future__ import annotations

import os

import numpy as np
import rasterio
import xarray as xr

from pipeline.cli import main
from pipeline.raster.run import segment_raster
from tests.raster.test_raster_stats_contents import _scene, _spec_file

TIME = "2024-06-01T01:00:00"


def _labels(path):
    with rasterio.open(path) as src:
        return src.read(1)


class _Exploding:
    """A model that must not run."""

    def __call__(self, x):
        raise AssertionError("the model ran for a scene that was done")

    def eval(self):
        return self


def test_a_retried_run_skips_the_scene_it_finished_and_redoes_what_changed(tmp_path):
    spec = _spec_file(tmp_path / "model")
    image = _scene(tmp_path / "in" / "tile.tif")
    out = tmp_path / "out"
    first = segment_raster(image, spec, out, time=TIME, device="cpu")
    assert not first.skipped
    labels = _labels(first.labels_path)
    stamp = first.labels_path.stat().st_mtime_ns

    again = segment_raster(image, spec, out, time=TIME, device="cpu", model=_Exploding())
    assert again.skipped and again.engine.windows_run == 0
    assert first.labels_path.stat().st_mtime_ns == stamp  # nothing rewritten
    assert float(again.stats["area_m2"].sum()) == float(first.stats["area_m2"].sum())

    # another night is new work; --force redoes a done scene; other bands are other work
    assert not segment_raster(image, spec, out, time="2024-06-02T01:00", device="cpu").skipped
    assert not segment_raster(image, spec, out, time=TIME, device="cpu", force=True).skipped
    assert not segment_raster(image, spec, out, time=TIME, device="cpu", bands=[3, 2, 1]).skipped
    # the input rewritten in place (same path, new modification time) is redone with the new pixels
    assert not segment_raster(image, spec, out, time=TIME, device="cpu").skipped  # back to all bands: redo
    _scene(image, seed=1)
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    redone = segment_raster(image, spec, out, time=TIME, device="cpu")
    assert not redone.skipped and not np.array_equal(_labels(redone.labels_path), labels)
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert ds.sizes["time"] == 2 and ds.sizes["scene"] == 1


def test_a_missing_quicklook_or_labels_file_is_redone(tmp_path):
    spec = _spec_file(tmp_path / "model")
    image = _scene(tmp_path / "tile.tif")
    out = tmp_path / "out"
    first = segment_raster(image, spec, out, time=TIME, device="cpu")
    first.quicklook_path.unlink()  # killed after the statistics, before the quicklook
    assert not segment_raster(image, spec, out, time=TIME, device="cpu").skipped
    first.labels_path.unlink()
    assert not segment_raster(image, spec, out, time=TIME, device="cpu").skipped
    assert first.labels_path.is_file() and first.quicklook_path.is_file()


def test_the_cli_says_skipped(tmp_path, capsys):
    spec = _spec_file(tmp_path / "model")
    image = _scene(tmp_path / "tile.tif")
    out = tmp_path / "out"
    args = ["raster", str(image), "--model", str(spec), "--out", str(out), "--time", TIME, "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "tile: skipped (done already; --force redoes it)" in captured.err
    assert "1/1 scene(s) done" in captured.out
