"""One forward pass at model load proving the network fits its spec, before any input is read.

A network that emits more or fewer channels than ``classes:`` lists, a dict or tuple instead of a
tensor, a smaller (strided) map, or 2D logits for a 3D task would otherwise run to the end and write
wrong labels (or fail scene after scene). :func:`probe_network` runs the network once on a zero input
of one window, batch 1, without gradients, and :func:`check_logits` states what was expected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

log = logging.getLogger(__name__)

_CONTRACT = "the network must map (N, in_channels, *window) to logits (N, n_classes, *window)"


def probe_network(spec: ModelSpec, network: torch.nn.Module, device: torch.device | str = "cpu") -> None:
    """Run ``network`` (already on ``device``, in eval mode) once on zeros ``(1, in_channels, *window)``.

    Args:
        spec: the spec the network was built from; ``window`` is ``(Y, X)`` or ``(Z, Y, X)``.
        network: the built network, weights loaded.
        device: where the network lives.

    Raises:
        ModelSpecError: the forward pass fails, or its output is not a tensor of shape
            ``(1, n_classes, *window)`` (see :func:`check_logits`).
    """
    shape = (1, spec.in_channels, *spec.window)
    start = time.perf_counter()
    try:
        x = torch.zeros(shape, dtype=torch.float32, device=device)
        with torch.no_grad():
            output = network(x)
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError and "can't allocate" are RuntimeErrors
        if isinstance(exc, RuntimeError) and not isinstance(exc, torch.OutOfMemoryError) and "alloc" not in str(exc).lower():  # cuDNN: ALLOC_FAILED
            raise _forward_failed(spec, shape, exc) from exc
        raise ModelSpecError(
            spec.source or spec.name,
            f"a test window of shape {shape} needs more memory than {device} has: {type(exc).__name__}: {_first_line(exc)}",
            "use a smaller window: (the window the network was trained on)",
        ) from exc
    except (ValueError, TypeError, IndexError, AssertionError) as exc:
        raise _forward_failed(spec, shape, exc) from exc
    check_logits(spec, output, tuple(x.shape))
    log.debug("model '%s': probe forward on %s took %.3f s", spec.name, tuple(x.shape), time.perf_counter() - start)


def _forward_failed(spec: ModelSpec, shape: tuple[int, ...], exc: Exception) -> ModelSpecError:
    """The error for a forward pass that failed on the probe window (not for want of memory)."""
    kind = "3D (Conv3d, spatial_dims=3)" if spec.task == "volume" else "2D (Conv2d, spatial_dims=2)"
    return ModelSpecError(
        spec.source or spec.name,
        f"architecture '{spec.architecture}' failed on a test window of shape {shape}: {type(exc).__name__}: {_first_line(exc)}",
        f"task '{spec.task}' needs a {kind} network taking in_channels={spec.in_channels}; check architecture, params, in_channels and window",
    )


def check_logits(spec: ModelSpec, output: Any, input_shape: Sequence[int]) -> None:
    """Refuse an ``output`` that is not logits ``(N, n_classes, *spatial)`` for an input ``(N, C, *spatial)``.

    Raises:
        ModelSpecError: naming the spec file, what came back and the fix.
    """
    where = spec.source or spec.name
    arch = f"architecture '{spec.architecture}'"
    if not isinstance(output, torch.Tensor):
        what = type(output).__name__
        if isinstance(output, dict):
            what += f" with keys {sorted(map(str, output))}"
        raise ModelSpecError(
            where,
            f"{arch} returned a {what}, not a tensor of logits",
            "make forward() return the logits tensor (e.g. wrap the network in a module returning output['logits'] or output[0]); " + _CONTRACT,
        )
    n, spatial = input_shape[0], tuple(input_shape[2:])
    shape = tuple(output.shape)
    expected = (n, spec.n_classes, *spatial)
    if shape == expected:
        return
    if len(shape) != len(expected):
        dims = len(shape) - 2
        raise ModelSpecError(
            where,
            f"{arch} returned {len(shape)}-D logits {shape} for input {tuple(input_shape)}, expected {expected}"
            + (f" (a {dims}D network for a task '{spec.task}' spec)" if dims in (2, 3) else ""),
            f"task '{spec.task}' needs a {spec.spatial_dims}D network; " + _CONTRACT,
        )
    if shape[1] != spec.n_classes:
        raise ModelSpecError(
            where,
            f"{arch} returns {shape[1]} channels but the spec lists {spec.n_classes} classes",
            f"list one class per output channel under classes:, or make the network emit {spec.n_classes} channels (params)",
        )
    raise ModelSpecError(
        where,
        f"{arch} returned logits {shape} for input {tuple(input_shape)}, expected {expected}",
        "the logits must have the input's size: upsample to the window in forward(); " + _CONTRACT,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
