"""SIGTERM (Prefect cancelling a process worker's run, Kubernetes evicting a pod, systemd stopping a
service) stops a ``segpipe raster`` run as Ctrl-C does: its cleanup runs, it says how to resume and
exits with 143; nothing temporary is left in ``--out`` and a rerun ends with the outputs of an
uninterrupted run.

Before: Python's default SIGTERM action ended the process at once: the staged label COG
(``<stem>.labels.tif.tmp-<8 hex>``), the ingest's ``<stem>.zarr.tmp-<8 hex>`` and the scene's lock
file stayed behind, and the exit status was -15 with no word. Real ``segpipe`` processes
(``tests/sigterm_child.py``), real signals, real GeoTIFFs."""

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
from affine import Affine
from safetensors.torch import save_file

from pipeline.cli import main
from pipeline.raster.run import segment_raster
from pipeline.stats_store import open_stats
from pipeline.termination import MESSAGE

REPO = Path(__file__).resolve().parents[2]
TIME = "2024-06-01T01:00:00"
CHILD = REPO / "tests" / "sigterm_child.py"


def _scene(path: Path) -> Path:
    data = np.random.default_rng(5).integers(1, 200, size=(3, 384, 384), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 384, "height": 384, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(10, 0, 500000, 0, -10, 6000000), "photometric": "MINISBLACK"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _spec(folder: Path, pause_s: float) -> Path:
    """A per-pixel model (the brightest band's class) that pauses ``pause_s`` per batch."""
    state = {"conv.weight": torch.eye(3)[:, :, None, None].contiguous(), "conv.bias": torch.tensor([0.5, 0.25, 0.0])}
    save_file(state, str(folder / "slow.safetensors"))
    spec = {
        "name": "slow-per-pixel", "task": "raster", "architecture": "tests.raster.sigterm_models:SlowPerPixel",
        "params": {"channels": 3, "pause_s": pause_s}, "in_channels": 3,
        "classes": [{"id": 0, "name": "water"}, {"id": 1, "name": "forest"}, {"id": 5, "name": "urban"}],
        "window": [64, 64], "overlap": 0.25, "normalize": {"kind": "none"}, "checkpoint": "slow.safetensors",
    }
    path = folder / "slow.yaml"
    path.write_text(json.dumps(spec))
    return path


def _args(scene: Path, spec: Path, out: Path) -> list[str]:
    return ["raster", str(scene), "--model", str(spec), "--out", str(out), "--block", "128", "--device", "cpu", "--time", TIME]


def _child(hook: str, when: str, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), hook, when, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stopped_cleanly(proc: subprocess.Popen, out: Path) -> None:
    """Exit 143 and the message; nothing temporary, no lock and nothing that looks complete left in ``out``."""
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == MESSAGE
    assert [p.name for p in out.rglob("*") if ".tmp-" in p.name] == []  # <name>.tmp-<8 hex>, .<name>.<8 hex>.tmp.tif, ...
    assert list(out.rglob("*.lock")) == []  # the scene's lock was released
    assert not (out / "scene.labels.tif").exists() and not (out / "stats.zarr").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The scene, the fast model and an uninterrupted run's outputs."""
    folder = tmp_path_factory.mktemp("sigterm")
    scene, spec = _scene(folder / "scene.tif"), _spec(folder, pause_s=0.0)
    assert main(_args(scene, spec, folder / "ref")) == 0
    return scene, spec, _outputs(folder / "ref")


def _outputs(out: Path) -> dict:
    with rasterio.open(out / "scene.labels.tif") as src:
        labels = {"labels": src.read(1), "crs": src.crs, "transform": src.transform}
    stats = open_stats(out / "stats.zarr")
    return {**labels, "area_m2": stats["area_m2"].values.tolist(), "quicklook": (out / "scene.quicklook.png").read_bytes()}


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) if k == "labels" else a[k] == b[k] for k in a)


@pytest.mark.parametrize(
    ("hook", "written"),
    [
        ("pipeline.raster.ingest:_finish_store", "the ingest's <stem>.zarr.tmp-<8 hex> with every tile"),
        ("pipeline.raster.publish:write_quicklook", "the staged label COG <stem>.labels.tif.tmp-<8 hex>"),
    ],
)
def test_sigterm_while_a_temporary_output_is_written_cleans_up_and_a_rerun_resumes(reference, tmp_path, hook, written):
    scene, spec, expected = reference
    out = tmp_path / "out"
    _stopped_cleanly(_child(hook, "before", _args(scene, spec, out)), out)
    if hook.endswith("write_quicklook"):  # stopped after the engine: its finished blocks are kept for the rerun
        assert int(zarr.open_array(str(out / ".work" / "scene.zarr"), path="labels_done", mode="r")[...].min()) == 1

    assert main(_args(scene, spec, out)) == 0
    assert _same(_outputs(out), expected)
    assert not (out / ".work").exists()


def test_sigterm_from_outside_mid_segmentation_stops_the_run_and_the_rerun_resumes(reference, tmp_path):
    scene, _, expected = reference
    spec = _spec(tmp_path, pause_s=0.05)  # about 2 s of batches: time to be stopped half-way
    out = tmp_path / "out"
    proc = _child("-", "never", _args(scene, spec, out))
    work, deadline = out / ".work" / "scene.zarr", time.monotonic() + 120
    while _done_blocks(work) < 2:  # of 9
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no block finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the process alone, as Kubernetes does (to PID 1)
    _stopped_cleanly(proc, out)
    done = _done_blocks(work)
    assert 2 <= done < 9

    resumed = segment_raster(scene, spec, out, block=128, device="cpu", time=TIME)
    assert resumed.engine.blocks_skipped >= done  # the blocks finished before SIGTERM are not segmented again
    assert _same(_outputs(out), expected)


def _done_blocks(work: Path) -> int:
    try:
        return int(zarr.open_array(str(work), path="labels_done", mode="r")[...].sum())
    except Exception:  # noqa: BLE001 - the store or array is not there yet
        return 0
