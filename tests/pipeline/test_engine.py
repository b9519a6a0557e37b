"""Properties of the block-streaming engine: exact per-pixel answers, block-size invariance,
agreement with MONAI's whole-image sliding-window inference, edge cases, resume, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference

from pipeline.engine import EngineConfig, run_engine
from pipeline.errors import EngineError

TIE = 1e-4  # logit margins below this are numerical ties: summation order may flip them


def labels_array(shape, block, dtype="uint8", store=None):
    return zarr.create_array(store=store if store is not None else {}, shape=shape, chunks=block, dtype=dtype)


def run_labels(image, model, *, window, block, overlap=0.25, class_ids=None, dtype="uint8", **kw):
    cfg = EngineConfig(window=window, overlap=overlap, block=block, device="cpu", class_ids=class_ids, label_dtype=dtype, **kw)
    out = labels_array(image.shape[1:], block, dtype)
    report = run_engine(image, model, cfg, out)
    return out[...], report


def margin(logits: np.ndarray) -> np.ndarray:
    """Gap between the largest and second-largest logit per pixel, (K, ...) -> (...)."""
    top2 = np.sort(logits, axis=0)[-2:]
    return top2[1] - top2[0]


def random_cnn(dims: int, in_ch: int, classes: int, seed: int = 0) -> torch.nn.Module:
    """A CNN whose receptive field (45 px) is larger than the overlaps used below."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    layers, ch = [], in_ch
    for d in (2, 4, 8, 8):
        layers += [conv(ch, 8, 3, padding=d, dilation=d), torch.nn.Tanh()]
        ch = 8
    layers.append(conv(ch, classes, 1))
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_per_pixel_model_gives_the_per_pixel_answer(dims):
    rng = np.random.default_rng(dims)
    shape = (4, 333, 517) if dims == 2 else (2, 45, 70, 61)
    image = rng.normal(size=shape).astype(np.float32)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(shape[0], 6, 1).eval()
    class_ids = (0, 2, 5, 7, 9, 11)
    window = (64, 64) if dims == 2 else (16, 32, 32)
    block = (128, 128) if dims == 2 else (20, 40, 40)
    labels, report = run_labels(image, conv, window=window, block=block, class_ids=class_ids)
    with torch.no_grad():
        logits = conv(torch.from_numpy(image)[None])[0].numpy()
    expected = np.asarray(class_ids)[logits.argmax(0)]
    clear = margin(logits) > TIE
    assert np.array_equal(labels[clear], expected[clear])
    assert (labels == expected).mean() > 0.9999
    assert report.windows_run == report.windows_total


def test_block_size_changes_nothing():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 1100, 900)).astype(np.float32)
    net = random_cnn(2, 4, 5)
    results = {}
    for block in (256, 512, 1024):
        results[block], report = run_labels(image, net, window=(128, 128), block=(block, block))
        assert report.windows_run == report.windows_total
    cfg = EngineConfig(window=(128, 128), overlap=0.25, block=(1024, 1024), device="cpu", output="logits")
    logits = zarr.create_array(store={}, shape=(5, 1100, 900), chunks=(5, 1024, 1024), dtype="float32")
    run_engine(image, net, cfg, logits)
    clear = margin(logits[...]) > TIE
    assert np.array_equal(results[256][clear], results[1024][clear])
    assert np.array_equal(results[512][clear], results[1024][clear])
    assert clear.mean() > 0.999


@pytest.mark.parametrize(
    "shape,window,block,overlap",
    [
        ((3, 300, 517), (64, 64), (100, 100), 0.25),
        ((2, 70, 90, 100), (32, 48, 48), (40, 40, 40), 0.5),
        ((3, 20, 30), (64, 64), (64, 64), 0.25),  # smaller than a window: padded symmetrically
        ((3, 1, 200), (64, 64), (16, 64), 0.25),  # a 1-pixel-wide image
        ((1, 45, 33, 12), (32, 32, 32), (64, 64, 64), 0.25),  # one block, padded along z
    ],
)
def test_agrees_with_monai_sliding_window_inference(shape, window, block, overlap):
    rng = np.random.default_rng(2)
    image = rng.normal(size=shape).astype(np.float32)
    net = random_cnn(len(window), shape[0], 4, seed=3)
    labels, report = run_labels(image, net, window=window, block=block, overlap=overlap, batch_size=3)
    cfg = EngineConfig(window=window, overlap=overlap, block=block, device="cpu", output="logits")
    logits = zarr.create_array(store={}, shape=(4, *shape[1:]), chunks=(4, *block), dtype="float32")
    run_engine(image, net, cfg, logits)
    with torch.inference_mode():
        ref = sliding_window_inference(torch.from_numpy(image)[None], window, 3, net, overlap=overlap, mode="gaussian")[0].numpy()
    assert (labels == ref.argmax(0)).mean() >= 0.9999
    np.testing.assert_allclose(logits[...], ref, rtol=1e-4, atol=1e-5)
    assert report.windows_run == report.windows_total


def test_more_than_255_classes_needs_uint16():
    image = np.random.default_rng(4).normal(size=(3, 40, 50)).astype(np.float32)
    conv = torch.nn.Conv2d(3, 300, 1).eval()
    with pytest.raises(EngineError, match="uint16"):
        run_labels(image, conv, window=(32, 32), block=(32, 32), class_ids=tuple(range(300)))
    labels, _ = run_labels(image, conv, window=(32, 32), block=(32, 32), class_ids=tuple(range(300)), dtype="uint16")
    with torch.no_grad():
        logits = conv(torch.from_numpy(image)[None])[0].numpy()
    clear = margin(logits) > TIE
    assert np.array_equal(labels[clear], logits.argmax(0)[clear])
    assert labels.dtype == np.uint16


def test_output_must_be_whole_chunks():
    image = np.zeros((1, 100, 100), np.float32)
    cfg = EngineConfig(window=(32, 32), block=(64, 64), device="cpu")
    out = labels_array((100, 100), (50, 50))
    with pytest.raises(EngineError, match="chunks"):
        run_engine(image, torch.nn.Conv2d(1, 2, 1), cfg, out)


class CountingModel(torch.nn.Module):
    """Wraps a model, counts windows, and can fail after a number of windows (a killed run)."""

    def __init__(self, inner: torch.nn.Module, fail_after: int | None = None):
        super().__init__()
        self.inner, self.fail_after, self.windows = inner, fail_after, 0

    def forward(self, x):
        self.windows += x.shape[0]
        if self.fail_after is not None and self.windows > self.fail_after:
            raise RuntimeError("killed")
        return self.inner(x)


def test_resume_skips_finished_blocks_and_gives_identical_labels(tmp_path):
    image = np.random.default_rng(5).normal(size=(4, 600, 500)).astype(np.float32)
    net = random_cnn(2, 4, 5, seed=6)
    cfg = EngineConfig(window=(64, 64), overlap=0.25, block=(128, 128), device="cpu", batch_size=2)
    reference = labels_array((600, 500), (128, 128))
    run_engine(image, net, cfg, reference)

    root = zarr.open_group(str(tmp_path / "run.zarr"), mode="w")
    out = root.create_array("labels", shape=(600, 500), chunks=(128, 128), dtype="uint8", fill_value=0)
    done = root.create_array("done", shape=(5, 4), chunks=(1, 1), dtype="uint8", fill_value=0)
    first = CountingModel(net, fail_after=60)
    with pytest.raises(RuntimeError, match="killed"):
        run_engine(image, first, cfg, out, done=done)
    assert 0 < done[...].sum() < 20

    root = zarr.open_group(str(tmp_path / "run.zarr"), mode="r+")
    second = CountingModel(net)
    report = run_engine(image, second, cfg, root["labels"], done=root["done"])
    assert np.array_equal(root["labels"][...], reference[...])
    assert second.windows == report.windows_run < report.windows_total
    assert root["done"][...].all()


def _run_with_budget(tmp_path, side: int, pending_memory_mb: int):
    rng = np.random.default_rng(7)
    source = zarr.create_array(store=str(tmp_path / f"in{side}.zarr"), shape=(4, side, side), chunks=(4, 256, 256), dtype="uint8", overwrite=True)
    for y in range(0, side, 256):
        source[:, y : y + 256] = rng.integers(0, 255, size=(4, min(256, side - y), side), dtype=np.uint8)
    out = zarr.create_array(store={}, shape=(side, side), chunks=(256, 256), dtype="uint8")
    cfg = EngineConfig(window=(64, 64), overlap=0.5, block=(256, 256), device="cpu", pending_memory_mb=pending_memory_mb, batch_size=8)
    torch.manual_seed(0)
    report = run_engine(source, torch.nn.Conv2d(4, 24, 1).eval(), cfg, out)
    assert report.windows_run == report.windows_total
    return out[...], report


@pytest.mark.slow
def test_waiting_pieces_stay_within_the_budget_and_spill_to_disk(tmp_path):
    """Pieces waiting for a later block past ``pending_memory_mb`` wait on disk: 16x the pixels hold
    no more of them in memory, and the labels equal a run that kept every piece in memory. (The
    process as a whole is measured by ``bench/raster_scaling.py``: peak RSS at 32k^2 is 1.23x the
    4k^2 run.)"""
    _, small = _run_with_budget(tmp_path, 768, 1)
    large_labels, large = _run_with_budget(tmp_path, 3072, 1)  # 16x the pixels
    whole_labels, whole = _run_with_budget(tmp_path, 3072, 1024)
    assert small.peak_pending_bytes <= 2**20 and large.peak_pending_bytes <= 2**20
    assert 0 < small.pieces_on_disk < large.pieces_on_disk
    # the control: without the budget the waiting pieces grow with the image's width
    assert whole.pieces_on_disk == 0 and whole.peak_pending_bytes > 8 * large.peak_pending_bytes
    np.testing.assert_array_equal(large_labels, whole_labels)


@pytest.mark.slow
def test_strips_change_no_label_and_send_fewer_pieces_to_disk(tmp_path, monkeypatch):
    """Blocks run in strips (``pipeline.grid.STRIP_BLOCKS`` wide): a row of a strip waits for few
    pieces, so within the same budget far fewer go to disk than in whole image rows, and the labels
    are the same."""
    import pipeline.grid

    monkeypatch.setattr(pipeline.grid, "STRIP_BLOCKS", 12)  # 12 blocks wide: whole rows (~23 MB of pieces wait per row)
    rows_labels, rows = _run_with_budget(tmp_path, 3072, 16)
    monkeypatch.setattr(pipeline.grid, "STRIP_BLOCKS", 6)  # 2 strips: a strip's row of pieces (~13 MB) fits the budget
    strips_labels, strips = _run_with_budget(tmp_path, 3072, 16)
    np.testing.assert_array_equal(strips_labels, rows_labels)
    assert 0 < strips.pieces_on_disk < rows.pieces_on_disk / 2


@pytest.mark.parametrize("window", [(64, 64), (96, 80, 48), (7,), (5, 512)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_importance_map_equals_monai(window, blend):
    from monai.data.utils import compute_importance_map

    from pipeline.windows import importance_map

    ours = importance_map(window, blend, 0.125, torch.device("cpu"))
    theirs = compute_importance_map(window, mode=blend, sigma_scale=0.125, device="cpu", dtype=torch.float32)
    assert torch.equal(ours, theirs)


def test_gpu_staging_path_gives_the_same_labels(monkeypatch):
    """On CUDA the reader threads fill page-locked buffers, start each region's copy to the device
    on their own stream, and the main thread waits for that copy before the block runs; each block's
    labels come back by a copy the writer thread waits for. No GPU here (mocked): page-locked
    buffers are plain memory and copies are clones; the hand-overs between threads are exercised
    and must not change a label."""
    import threading

    import pipeline.engine
    from pipeline.staging import Fetched, PinnedBuffers, RegionStaging

    rng = np.random.default_rng(11)
    image = rng.normal(size=(3, 300, 420)).astype(np.float32)
    net = random_cnn(2, 3, 5)
    expected, _ = run_labels(image, net, window=(64, 64), block=(128, 128))
    calls = {"take": 0, "copy": [], "wait": []}

    class CudaLikeStaging(RegionStaging):
        def __init__(self, device, keep):
            super().__init__(device, keep)
            self.cuda, self.host_buffers = True, PinnedBuffers()

        def _copy_to_device(self, region):
            calls["copy"].append(threading.current_thread().name)
            return region.clone(), object()

        def _wait_for_copy(self, staged):
            calls["wait"].append(staged.copied)

    def take(self, shape):
        calls["take"] += 1
        return torch.full(shape, float("nan"))  # never reused: stale data would show

    class CopyEvent:  # the writer must wait for each block's copy back before it writes the labels
        def synchronize(self):
            calls["fetched"].append(threading.current_thread().name)

    def fetch(result):
        return Fetched(result.clone(), CopyEvent())

    calls["fetched"] = []
    monkeypatch.setattr(PinnedBuffers, "take", take)
    monkeypatch.setattr(pipeline.engine, "RegionStaging", CudaLikeStaging)
    monkeypatch.setattr(pipeline.engine, "fetch", fetch)
    labels, report = run_labels(image, net, window=(64, 64), block=(128, 128), readers=3)
    assert calls["take"] == len(calls["copy"]) == len(calls["wait"]) == report.blocks_run
    assert all(name.startswith("segpipe-read") for name in calls["copy"])  # copies start off the main thread
    assert len(calls["fetched"]) == report.blocks_total
    assert all(name.startswith("segpipe-write") for name in calls["fetched"])  # the main thread never waits
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("readers", [2, 4])
def test_reader_threads_change_no_label(readers):
    """Several reader threads read blocks out of order; the engine still runs them in order."""
    rng = np.random.default_rng(12)
    image = rng.normal(size=(3, 310, 450)).astype(np.float32)
    net = random_cnn(2, 3, 5)
    expected, _ = run_labels(image, net, window=(64, 64), block=(64, 64))
    source = zarr.create_array(store={}, shape=image.shape, chunks=(3, 64, 64), dtype="float32")  # read through the chunk cache
    source[...] = image
    labels, report = run_labels(source, net, window=(64, 64), block=(64, 64), readers=readers, prefetch=1)
    np.testing.assert_array_equal(labels, expected)
    assert report.windows_run == report.windows_total


class RunsOutOfMemory(torch.nn.Module):
    """A model that fails like a small GPU when given more than ``fits`` windows at once."""

    def __init__(self, net, fits: int) -> None:
        super().__init__()
        self.net, self.fits, self.calls = net, fits, []

    def forward(self, x):
        self.calls.append(len(x))
        if len(x) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_out_of_memory_halves_the_batch_and_changes_no_label(caplog):
    rng = np.random.default_rng(13)
    image = rng.normal(size=(3, 200, 260)).astype(np.float32)
    net = random_cnn(2, 3, 4)
    expected, _ = run_labels(image, net, window=(64, 64), block=(128, 128), batch_size=2)
    model = RunsOutOfMemory(net, fits=2)
    labels, report = run_labels(image, model, window=(64, 64), block=(128, 128), batch_size=8)
    np.testing.assert_array_equal(labels, expected)
    assert model.calls[:3] == [8, 4, 2] and max(model.calls[3:]) == 2  # halved once for the whole run
    assert report.windows_run == report.windows_total
    assert "2 windows per model call" in caplog.text


def test_out_of_memory_on_one_window_says_what_to_do():
    from pipeline.errors import EngineError

    image = np.zeros((3, 100, 100), dtype=np.float32)
    with pytest.raises(EngineError, match="single window .*smaller window in the model spec, or --device cpu"):
        run_labels(image, RunsOutOfMemory(random_cnn(2, 3, 4), fits=0), window=(64, 64), block=(128, 128), batch_size=4)


def test_batch_size_default_by_device():
    from pipeline.engine import EngineConfig

    assert EngineConfig(window=(64, 64)).batch_for(torch.device("cpu")) == 4
    assert EngineConfig(window=(64, 64)).batch_for(torch.device("cuda")) == 16
    assert EngineConfig(window=(32, 32, 32)).batch_for(torch.device("cuda")) == 4
    assert EngineConfig(window=(64, 64), batch_size=3).batch_for(torch.device("cuda")) == 3


def test_pending_budget_default_by_device(monkeypatch):
    from pipeline.engine import EngineConfig

    config = EngineConfig(window=(64, 64))
    assert config.pending_bytes(torch.device("cpu")) == 128 * 2**20
    assert EngineConfig(window=(64, 64), pending_memory_mb=5).pending_bytes(torch.device("cuda")) == 5 * 2**20
    for memory, budget in ((80 * 2**30, 8 * 2**30), (16 * 2**30, 16 * 2**30 // 10)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, m=memory: type("P", (), {"total_memory": m}))
        assert config.pending_bytes(torch.device("cuda")) == budget


def test_reader_threads_default_by_device(monkeypatch):
    from pipeline.engine import EngineConfig

    config = EngineConfig(window=(64, 64))
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert config.reader_threads(torch.device("cpu")) == 1  # the model needs the cores
    assert config.reader_threads(torch.device("cuda")) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert config.reader_threads(torch.device("cuda")) == 1
    assert EngineConfig(window=(64, 64), readers=3).reader_threads(torch.device("cpu")) == 3

def _collar(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A valid mask like a scene's rotated footprint: a tilted band of data, nodata around it, and
    a few isolated valid pixels in the nodata (each must keep every window that covers it)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    valid = np.abs(grids[-1] - 0.6 * grids[-2] - shape[-1] * 0.2) < shape[-1] * 0.25
    for _ in range(5):
        valid[tuple(int(rng.integers(0, n)) for n in shape)] = True
    return valid


@pytest.mark.parametrize("dims", [2, 3])
def test_windows_over_nodata_only_are_left_out_and_change_no_valid_label(dims):
    """``valid``: windows without a valid pixel are not run; every valid pixel keeps exactly the
    label of a run without the mask (the same windows, summed in the same order), whatever the block."""
    rng = np.random.default_rng(5)
    shape = (3, 600, 700) if dims == 2 else (2, 48, 96, 120)
    window = (64, 64) if dims == 2 else (16, 32, 32)
    image = rng.normal(size=shape).astype(np.float32)
    valid = _collar(shape[1:], seed=dims)
    net = random_cnn(dims, shape[0], 4, seed=dims)
    blocks = [(128, 128), (200, 150)] if dims == 2 else [(16, 48, 48), (24, 40, 56)]
    full, full_report = run_labels(image, net, window=window, block=blocks[0], class_ids=(0, 3, 5, 7))
    for block in blocks:
        cfg = EngineConfig(window=window, block=block, device="cpu", class_ids=(0, 3, 5, 7))
        out = labels_array(shape[1:], block)
        report = run_engine(image, net, cfg, out, valid=zarr.create_array(store={}, data=valid.astype(np.uint8), chunks=block))
        assert np.array_equal(out[...][valid], full[valid])
        assert report.windows_run < 0.9 * full_report.windows_run  # the nodata collar's windows were left out
    assert full_report.windows_run == full_report.windows_total


def test_a_block_no_run_window_covers_gets_the_first_class_id():
    image = np.zeros((1, 300, 300), np.float32)
    valid = np.zeros((300, 300), bool)
    valid[:40, :40] = True
    cfg = EngineConfig(window=(32, 32), block=(100, 100), device="cpu", class_ids=(4, 9))
    out = labels_array((300, 300), (100, 100))
    conv = torch.nn.Conv2d(1, 2, 1).eval()
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.0, 1.0]))  # class 9 everywhere a window ran
    report = run_engine(image, conv, cfg, out, valid=valid)
    labels = out[...]
    assert (labels[:40, :40] == 9).all() and (labels[100:, :] == 4).all() and (labels[:, 100:] == 4).all()
    assert 0 < report.windows_run < report.windows_total


def test_a_valid_mask_needs_labels_and_the_image_shape():
    image = np.zeros((1, 64, 64), np.float32)
    conv = torch.nn.Conv2d(1, 2, 1).eval()
    cfg = EngineConfig(window=(32, 32), block=(64, 64), device="cpu")
    with pytest.raises(EngineError, match="valid mask shape"):
        run_engine(image, conv, cfg, labels_array((64, 64), (64, 64)), valid=np.ones((64, 63), bool))
    logits = EngineConfig(window=(32, 32), block=(64, 64), device="cpu", output="logits")
    with pytest.raises(EngineError, match="needs output='labels'"):
        run_engine(image, conv, logits, zarr.create_array(store={}, shape=(2, 64, 64), chunks=(2, 64, 64), dtype="float32"), valid=np.ones((64, 64), bool))


@pytest.mark.parametrize(
    "shape,window,block", [((300, 410), (64, 64), (100, 128)), ((20, 30), (64, 64), (64, 64)), ((30, 90, 130), (16, 32, 32), (20, 40, 30))]
)
def test_windows_with_data_keeps_exactly_the_windows_that_touch_a_valid_pixel(shape, window, block):
    """Against a brute force over the global grid: a window is kept iff its image box (padding
    excluded) holds a valid pixel, at its very edge too (a window meeting one valid pixel with its
    last row still adds to that pixel's sum)."""
    from pipeline.engine import plan_for, windows_with_data

    valid = _collar(shape, seed=7)
    edge = tuple(min(w, n) - 1 for w, n in zip(window, shape))
    valid[edge] = True  # the last pixel of the first window: only windows reaching it keep it
    plan = plan_for((1, *shape), EngineConfig(window=window, block=block))
    kept = []
    for b in plan.order():
        kept += windows_with_data(plan, b, valid)
    expected = []
    for b in plan.order():
        for start in plan.windows(b):
            box = tuple(slice(max(s - p, 0), max(s - p + w, 0)) for s, p, w in zip(start, plan.grid.pad_before, window))
            if valid[box].any():
                expected.append(start)
    assert kept == expected and kept
    assert len(kept) < plan.grid.n_windows or plan.grid.n_windows == 1
