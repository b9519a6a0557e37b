"""One run at a time per scene and output folder (pipeline.work_lock in pipeline.raster.run): a second
run of a scene into the same --out fails at once and touches nothing of the first's; a broken work
store left by a crash is replaced."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from models.spec import spec_from_dict
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.raster.run import segment_raster
from pipeline.work_lock import work_lock

CLASSES = [{"id": 0, "name": "water"}, {"id": 1, "name": "forest"}, {"id": 5, "name": "urban"}]
WEIGHT = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
BIAS = [0.5, 0.25, 0.0]
LOCKED = "another segpipe run is segmenting this scene into this folder"


def _model() -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(WEIGHT)[:, :, None, None])
        conv.bias.copy_(torch.tensor(BIAS))
    return conv.eval()


def _spec():
    return spec_from_dict({
        "name": "per-pixel", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 3, "out_channels": 3, "kernel_size": 1}, "in_channels": 3,
        "classes": CLASSES, "window": [64, 64], "overlap": 0.25,
    })


def _expected(pixels: np.ndarray) -> np.ndarray:
    logits = np.einsum("kc,cyx->kyx", np.asarray(WEIGHT), pixels.astype(np.float64)) + np.asarray(BIAS)[:, None, None]
    return np.array([c["id"] for c in CLASSES])[np.argmax(logits, axis=0)]


@pytest.fixture
def scene(tmp_path, make_geotiff) -> Path:
    pixels = np.random.default_rng(3).integers(0, 255, (3, 300, 280), dtype=np.uint8)
    return make_geotiff(tmp_path / "scene.tif", pixels)


def _run(scene: Path, out: Path, **kw):
    return segment_raster(scene, _spec(), out, block=128, device="cpu", model=_model(), time="2024-08-01", **kw)


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def wait_for(condition, seconds: float = 30.0) -> bool:
    """Poll ``condition`` until true (the engine writes blocks on a thread of its own) or ``seconds`` pass.
    Also used by tests/volume/test_volume_work_lock.py."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes. Also used by tests/volume/test_volume_work_lock.py."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def settled_snapshot(folder: Path, seconds: float = 30.0) -> dict[str, str]:
    """:func:`snapshot` once two taken 0.2 s apart agree: the first run, held in its progress callback,
    may still be finishing writes on its other threads (the volume's source.zarr copy, the engine's
    writer): a snapshot taken mid-write held a zarr ``.partial`` file that was gone a moment later."""
    end = time.monotonic() + seconds
    previous: dict[str, str] | None = None
    while time.monotonic() < end:
        try:
            current = snapshot(folder)
        except FileNotFoundError:  # a file renamed between listing and reading
            current = None
        if current is not None and current == previous:
            return current
        previous = current
        time.sleep(0.2)
    raise AssertionError(f"{folder} kept changing for {seconds} s")


def in_background(call) -> tuple[threading.Thread, dict[str, object]]:
    """Start ``call()`` on a thread; its result, or the exception it raised, lands in ``results["first"]``.
    Also used by tests/volume/test_volume_work_lock.py."""
    results: dict[str, object] = {}

    def first() -> None:
        try:
            results["first"] = call()
        except BaseException as exc:  # noqa: BLE001 - reported by the callers' assertions
            results["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    return thread, results


def test_second_run_fails_at_once_and_leaves_the_first_alone(scene, tmp_path):
    out = tmp_path / "out"
    in_segment, go = threading.Event(), threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "segment" and done == 1 and not in_segment.is_set():
            in_segment.set()
            assert go.wait(60)

    thread, results = in_background(lambda: _run(scene, out, progress=progress))
    try:
        assert in_segment.wait(60), results
        work = out / ".work"
        assert (work / "scene.lock").read_text() == f"{os.getpid()}\n"
        assert wait_for(lambda: any((out / ".work/scene.zarr/labels/c/").rglob("*")))  # mid-segment: a block written
        before = settled_snapshot(out)
        with pytest.raises(InputError) as caught:
            _run(scene, out)
        assert str(caught.value) == f"{scene}: {LOCKED} (pid {os.getpid()}; --out {out}) (wait for it to finish, or use another --out)"
        after = snapshot(out)  # the first run's writer thread may add blocks meanwhile
        assert before.items() <= after.items()  # not a file of the first run's removed or changed
    finally:
        go.set()
        thread.join(120)
    first_result = results["first"]
    assert not isinstance(first_result, BaseException), first_result
    solo = _run(scene, tmp_path / "solo")
    with rasterio.open(scene) as src:
        pixels = src.read()
    assert np.array_equal(_labels(first_result.labels_path), _labels(solo.labels_path))
    assert np.array_equal(_labels(first_result.labels_path), _expected(pixels))
    assert not (out / ".work").exists()  # lock file and work store gone, and the folder with them


def test_lock_file_is_gone_after_a_failed_run_and_the_scene_can_run_again(scene, tmp_path):
    out = tmp_path / "out"

    def boom(stage: str, done: int, total: int) -> None:
        if stage == "segment":
            raise RuntimeError("killed mid-segment")

    with pytest.raises(RuntimeError):
        _run(scene, out, progress=boom)
    assert not (out / ".work" / "scene.lock").exists()
    assert (out / ".work" / "scene.zarr").is_dir()  # kept for the resume
    result = _run(scene, out)
    assert result.labels_path.is_file()
    assert not (out / ".work").exists()


@pytest.mark.parametrize("broken", ["empty folder", "garbage files", "garbage zarr.json", "a file"])
def test_unreadable_work_store_is_replaced(scene, tmp_path, caplog, broken):
    out = tmp_path / "out"
    store = out / ".work" / "scene.zarr"
    if broken == "a file":
        store.parent.mkdir(parents=True)
        store.write_bytes(b"\x00junk")
    else:
        (store / "labels" / "c").mkdir(parents=True)
        if broken == "garbage files":
            (store / "labels" / "c" / "0").write_bytes(os.urandom(64))
            (store / "notes.txt").write_text("left by a race")
        if broken == "garbage zarr.json":
            (store / "zarr.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="pipeline.work_lock"):
        result = _run(scene, out)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert f"{store}: not a" in caplog.text and "removing it and starting this scene afresh" in caplog.text
    with rasterio.open(scene) as src:
        assert np.array_equal(_labels(result.labels_path), _expected(src.read()))
    assert not (out / ".work").exists()


def test_readable_work_store_is_kept_for_the_resume(scene, tmp_path, caplog):
    out = tmp_path / "out"
    _run(scene, out, keep_work=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.work_lock"):
        _run(scene, out, keep_work=True)
    assert not caplog.records
    assert (out / ".work" / "scene.zarr" / "zarr.json").is_file()
    assert not (out / ".work" / "scene.lock").exists()


def test_cli_locked_scene_fails_and_the_other_scenes_finish(scene, tmp_path, make_geotiff, capsys):
    other = make_geotiff(tmp_path / "other.tif", np.random.default_rng(4).integers(0, 255, (3, 90, 70), dtype=np.uint8))
    spec_path = tmp_path / "pp.yaml"
    _save_spec(spec_path)
    out = tmp_path / "out"
    with work_lock(out / ".work", "scene", subject=scene, out_dir=out) as lock:
        code = main(["raster", str(scene), str(other), "--model", str(spec_path), "--out", str(out), "--block", "128", "--device", "cpu"])
        assert lock.read_text() == f"{os.getpid()}\n"
        assert sorted(p.name for p in (out / ".work").iterdir()) == ["scene.lock"]  # no work store of its own started
    captured = capsys.readouterr()
    assert code == 1
    assert f"{scene}: {LOCKED} (pid {os.getpid()}; --out {out}) (wait for it to finish, or use another --out)" in " ".join(captured.err.split())
    assert "1/2 scene(s) done" in captured.out
    assert (out / "other.labels.tif").is_file() and not (out / "scene.labels.tif").exists()
    assert not any((out / ".work").iterdir())  # the holder's lock file went with its release


def _save_spec(path: Path) -> None:
    import yaml
    from safetensors.torch import save_file

    save_file(_model().state_dict(), str(path.with_suffix(".safetensors")))
    path.write_text(yaml.safe_dump({
        "name": "per-pixel", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 3, "out_channels": 3, "kernel_size": 1}, "in_channels": 3,
        "classes": CLASSES, "window": [64, 64], "checkpoint": path.with_suffix(".safetensors").name,
    }))


def test_lock_dies_with_a_killed_holder(tmp_path):
    """flock locks die with their process: a SIGKILLed run leaves its lock file, never a locked scene."""
    work = tmp_path / "out" / ".work"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pipeline.work_lock import work_lock\n"
            f"with work_lock({str(work)!r}, 's', subject='s.tif', out_dir='out'):\n"
            "    print('held', flush=True); time.sleep(60)\n"
        )],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match=rf"\(pid {holder.pid}; --out out\)"):
            with work_lock(work, "s", subject="s.tif", out_dir="out"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert (work / "s.lock").is_file()  # left behind by the killed holder
    with work_lock(work, "s", subject="s.tif", out_dir="out") as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not (work / "s.lock").exists()


def test_lock_stays_exclusive_while_holders_come_and_go(tmp_path):
    """Threads taking and releasing the lock (file created and unlinked each time): never two inside at once."""
    work = tmp_path / ".work"
    inside, most, refused, entered = [0], [0], [0], [0]
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(300):
            try:
                with work_lock(work, "s", subject="s.tif", out_dir="out"):
                    with guard:
                        inside[0] += 1
                        entered[0] += 1
                        most[0] = max(most[0], inside[0])
                    with guard:
                        inside[0] -= 1
            except InputError:
                with guard:
                    refused[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 1
    assert entered[0] + refused[0] == 1200 and entered[0] > 0
    assert not (work / "s.lock").exists()
