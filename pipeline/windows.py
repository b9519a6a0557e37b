"""Running windows through a model on a device: device choice, importance map, autocast, model
preparation (eval, channels_last, torch.compile) and the per-block window runner.

Axis order: windows ``(N, C, *window)``; logits ``(N, K, *window)``; accumulators ``(K[+1], *region)``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable

import torch

from pipeline.engine_types import Blend, Compile, EngineConfig, Precision
from pipeline.errors import EngineError
from pipeline.stop import check_stop
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

def auto_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name is passed to :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device '{name}' requested but CUDA is not available (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise EngineError(f"device '{name}' requested but this machine has {count} CUDA device(s) (use --device cuda:0 to cuda:{count - 1}, or auto)")
    return device


def runs_on_gpu(name: str) -> bool:
    """Whether device ``name`` resolves to a GPU here; a device that is not there counts as no GPU
    (what asked for it fails later, with :func:`auto_device`'s message). For choosing defaults."""
    try:
        return auto_device(name).type == "cuda"
    except (EngineError, RuntimeError):  # RuntimeError: a name torch.device does not parse
        return False


def importance_map(window: tuple[int, ...], blend: Blend, sigma_scale: float, device: torch.device) -> torch.Tensor:
    """MONAI's importance map (``monai.data.utils.compute_importance_map``), gaussian or constant.

    Same formula, clamped to the same small positive minimum; written here because importing
    ``monai.data`` loads all of MONAI (and transformers), seconds of start-up for ten lines.
    ``tests/pipeline/test_engine.py`` checks it equals MONAI's.
    """
    if blend == "constant":
        return torch.ones(window, dtype=torch.float32, device=device)
    weights = torch.ones((), dtype=torch.float32, device=device)
    for size in window:
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x**2 / (-2 * (size * sigma_scale) ** 2))
        weights = weights.unsqueeze(-1) * g
    return torch.clamp(weights, min=max(weights.min().item(), 1e-3))


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision == "float32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(
    model: Callable[[torch.Tensor], torch.Tensor], device: torch.device, *, channels_last: bool = False, compile_mode: Compile = "none"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Move a ``torch.nn.Module`` to ``device`` in eval mode (other callables pass through), optionally
    in channels_last layout and compiled with ``torch.compile``."""
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    if compile_mode != "none":
        key = (compile_mode, device)
        per_model = _COMPILED.setdefault(model, {})
        if key not in per_model:  # compile once per model, not once per block
            per_model[key] = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
        model = per_model[key]
    return model


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SpanTimer:
    """Sums the time of ``with timer.span():`` blocks: wall clock on CPU; on a GPU, CUDA events read
    once at the end (:meth:`total` synchronises), so timing adds no synchronisation per block.

    On a GPU a span is the device's time from reaching the span's start to finishing its work,
    including any wait for the host to enqueue more.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: list = []

    @contextlib.contextmanager
    def span(self):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.spans.append(time.perf_counter() - t0)

    def total(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.spans) / 1000
        return sum(self.spans)


class WindowRunner:
    """Runs the windows of one block through the model and accumulates importance-weighted logits."""

    def __init__(
        self, model: Callable[[torch.Tensor], torch.Tensor], config: EngineConfig, device: torch.device, *, reuse_buffers: bool = False
    ) -> None:
        """``reuse_buffers``: keep the accumulator and batch buffers between blocks (see :mod:`pipeline.workspace`);
        then a result of :meth:`accumulate` is only valid until the next call."""
        self.config = config
        self.device = device
        # channels_last (NHWC) for 2D: cuDNN's tensor-core layout on GPU, and oneDNN's fast path on CPU
        # (a 1x1 Conv2d runs ~10x faster, U-Net/DeepLab/SegFormer 0-10 % faster; measured here)
        self.channels_last = len(config.window) == 2
        self.model = prepare_model(model, device, channels_last=self.channels_last, compile_mode=config.compile)
        self.weights = importance_map(config.window, config.blend, config.sigma_scale, device)
        self.with_weights = config.output == "logits"
        self.model_timer = SpanTimer(device)
        self.batch_size = config.batch_for(device)
        self.pin = device.type == "cuda"
        self.workspace = Workspace(device) if reuse_buffers else None

    def _smaller_batch(self, batch: torch.Tensor, error: BaseException) -> None:
        """Halve the batch after the device ran out of memory (a smaller GPU than the defaults assume)."""
        if self.batch_size == 1:
            raise EngineError(
                f"the model ran out of {self.device} memory on a single window {tuple(batch.shape[1:])}: "
                "use a smaller window in the model spec, or --device cpu"
            ) from error
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.batch_size = max(1, self.batch_size // 2)
        log.warning("out of %s memory: %d windows per model call from now on", self.device, self.batch_size)

    @property
    def seconds_model(self) -> float:
        """Time in the model's forward so far (on a GPU this waits for the device)."""
        return self.model_timer.total()

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if self.workspace is None:
            return torch.empty(shape, dtype=torch.float32, device=self.device)
        return self.workspace.get(name, shape)

    def accumulate(self, region: torch.Tensor, offsets: list[tuple[int, ...]]) -> torch.Tensor:
        """Sum ``weights * model(window)`` of the windows at ``offsets`` (relative to ``region``).

        Args:
            region: float32 tensor (CPU or the runner's device), ``(Y, X, C)`` for 2D windows (channels_last, as
                :func:`pipeline.engine.read_region` gives it with ``channels_last=True``), ``(C, Z, Y, X)`` for 3D.
            offsets: window starts relative to the region, pixels/voxels.

        Returns ``(K[+1], *region_spatial)`` float32 on the runner's device.
        """
        tensor = region
        if tensor.device != self.device:  # the engine's reader stages regions on the device already
            tensor = (tensor.pin_memory() if self.pin else tensor).to(self.device, non_blocking=True)
        spatial = tensor.shape[:-1] if self.channels_last else tensor.shape[1:]
        window = self.config.window
        acc: torch.Tensor | None = None
        i = 0
        while i < len(offsets):
            check_stop()  # between batches: a block of a slow model (or a GPU batch) is not waited for
            batch_offsets = offsets[i : i + self.batch_size]
            if self.channels_last:
                views = [tensor[oy : oy + window[0], ox : ox + window[1]] for oy, ox in batch_offsets]
                stacked = self._buffer("batch", (len(views), *window, tensor.shape[-1]))
                batch = torch.stack(views, out=stacked).permute(0, 3, 1, 2)  # (N, C, Y, X) view in channels_last memory
            else:
                views = [tensor[(slice(None), *(slice(o, o + w) for o, w in zip(off, window)))] for off in batch_offsets]
                batch = torch.stack(views, out=self._buffer("batch", (len(views), tensor.shape[0], *window)))
            try:
                with self.model_timer.span(), torch.inference_mode(), _autocast(self.device, self.config.precision):
                    logits = self.model(batch)
            except torch.OutOfMemoryError as error:
                self._smaller_batch(batch, error)
                continue  # the same windows again, fewer at a time
            i += len(batch_offsets)
            if not isinstance(logits, torch.Tensor) or logits.shape[0] != len(batch_offsets) or tuple(logits.shape[2:]) != window:
                shape = getattr(logits, "shape", type(logits).__name__)
                raise EngineError(f"model returned {shape} for a batch {tuple(batch.shape)}; expected (N, K, *window) logits")
            if logits.dtype != torch.float32 or not logits.is_contiguous():
                # NCHW float32: accumulating channels_last logits is ~4x slower
                logits = self._buffer("logits", tuple(logits.shape)).copy_(logits)
            if acc is None:
                channels = logits.shape[1] + (1 if self.with_weights else 0)
                acc = self._buffer("acc", (channels, *spatial)).zero_()
            for off, window_logits in zip(batch_offsets, logits):
                where = tuple(slice(o, o + w) for o, w in zip(off, window))
                # fused multiply-add into the accumulator: one pass, no temporary (5x faster than * then +=)
                acc[(slice(0, window_logits.shape[0]), *where)].addcmul_(window_logits, self.weights)
                if self.with_weights:
                    acc[(-1, *where)] += self.weights
        assert acc is not None  # every computed block has at least one window
        return acc
