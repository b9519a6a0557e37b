"""Checkpoints: read state_dicts safely, fit them to a network, write them atomically.

Reading never runs code from a file: ``.safetensors`` holds tensors only, and ``.pt/.pth/.ckpt/.bin``
go through ``torch.load(weights_only=True)``, which refuses pickles that would import or call
anything beyond plain tensors and containers.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from models.probe import probe_network
from models.registry import build_network
from models.spec import ModelSpec
from pipeline.errors import CheckpointError

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
_NESTING_KEYS = ("state_dict", "model")
_LISTED = 5  # keys named in a missing/unexpected message
_WEIGHTS_ATTR = "_segpipe_weights_from"


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the spec's network, load ``spec.checkpoint`` into it and return it in eval mode on ``device``.

    ``device`` may be ``"auto"`` (CUDA when available). Without a checkpoint the network keeps its
    random initialisation (a warning is logged) unless its builder loaded weights itself (a MONAI
    bundle, a local pretrained SegFormer folder).

    The loaded network then runs once on a zero window ``(1, in_channels, *window)`` (no gradients,
    on ``device``; :func:`models.probe.probe_network`), so a network whose logits do not match the
    spec (channel count vs ``classes:``, spatial size, 2D vs 3D, a dict instead of a tensor) is
    refused here, before any input is read.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or does not fit the network, or a
            weight in it is NaN or infinite (a diverged training run: every logit would be NaN).
        ModelSpecError: the network cannot be built from the spec, or its output does not fit it.
    """
    network = build_network(spec)
    if spec.checkpoint is not None:
        apply_state_dict(network, load_state_dict_file(spec.checkpoint), source=spec.checkpoint)
    elif getattr(network, _WEIGHTS_ATTR, None) is None:
        log.warning("model '%s' has no checkpoint: using randomly initialised weights (predictions are meaningless)", spec.name)
    target = _device(device)
    network = network.to(target).eval()
    probe_network(spec, network, target)
    return network


def require_checkpoint(spec: ModelSpec) -> None:
    """Raise now when ``spec`` names a checkpoint file that is not there: a batch checks this once,
    before any item, instead of failing every scene or study with the same error.

    Raises:
        CheckpointError: ``spec.checkpoint`` is set and is not a file.
    """
    if spec.checkpoint is not None and not Path(spec.checkpoint).is_file():
        raise CheckpointError(spec.checkpoint, f"checkpoint file not found (model '{spec.name}')", _MISSING_FIX)


_MISSING_FIX = "train one with `segpipe train` or fix `checkpoint:` in the model spec; `segpipe models` lists which models have weights"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict (name -> tensor) from ``.safetensors`` or a plain torch file, on the CPU.

    A torch file may nest the state_dict under ``"state_dict"`` or ``"model"`` (Lightning, many
    training scripts); a ``"module."`` prefix (DataParallel/DDP) is stripped.

    Raises:
        CheckpointError: missing file, unknown suffix, unreadable or code-carrying file, not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found", "train one with `segpipe train` or fix `checkpoint:` in the model spec")
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        raw = _read_torch(path)
    else:
        raise CheckpointError(path, f"unknown checkpoint type '{path.suffix}'", f"use one of {', '.join(SUFFIXES)}")
    return _as_state_dict(raw, path)


def apply_state_dict(network: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str | Path) -> None:
    """Load ``state`` into ``network`` strictly, naming ``source`` and the offending layers on failure."""
    expected = network.state_dict()
    for name, ref in expected.items():  # in model order, so the first differing layer is named
        if name in state and tuple(ref.shape) != tuple(state[name].shape):
            raise CheckpointError(
                source,
                f"layer '{name}' has shape {tuple(state[name].shape)} in the checkpoint but {tuple(ref.shape)} in the model",
                "the checkpoint was trained with other in_channels, classes or params; fix the spec or retrain",
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model keys missing from the checkpoint: {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
        raise CheckpointError(source, "; ".join(parts), "the checkpoint belongs to another architecture; check `architecture:` and `params:`")
    network.load_state_dict(state, strict=True)
    bad = not_numbers(network)
    if bad:
        raise CheckpointError(
            source, f"{len(bad)} tensor(s) hold NaN or infinite values: {_first([repr(n) for n in bad])}; every prediction would be NaN (one class everywhere)",
            "the training run that saved it diverged: use an earlier checkpoint, or retrain (e.g. with a lower learning rate)",
        )


def not_numbers(network: torch.nn.Module) -> list[str]:
    """The parameters of ``network`` holding NaN or +/-inf, and its buffers holding NaN (a buffer
    may hold -inf on purpose, as an attention mask), in model order."""
    bad = [name for name, p in network.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    return bad + [name for name, b in network.named_buffers() if b.is_floating_point() and bool(torch.isnan(b).any())]


def save_state_dict(network: torch.nn.Module, path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``network``'s weights as safetensors, atomically (a temporary name, then a rename).

    Tensors are copied to contiguous CPU memory; shared storage is written once per name.

    Raises:
        CheckpointError: the path does not end in ``.safetensors``, or a weight is NaN or infinite
            (:func:`not_numbers`: a diverged training run; nothing is written).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(path, "checkpoints are written as safetensors", "give an output path ending in .safetensors")
    bad = not_numbers(network)
    if bad:  # a diverged training run: weights that would predict one class everywhere
        raise CheckpointError(
            path, f"not saved: {len(bad)} tensor(s) of the network hold NaN or infinite values: {_first([repr(n) for n in bad])}",
            "training diverged (a NaN loss): lower the learning rate, or check the training data for NaN/inf values",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def mark_weights_loaded(network: torch.nn.Module, source: str | Path) -> torch.nn.Module:
    """Record that a builder loaded ``network``'s weights itself from ``source`` (so no random-init warning)."""
    setattr(network, _WEIGHTS_ATTR, str(source))
    return network


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file: {exc}", "re-export the checkpoint") from exc


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols other than 2; the restricted unpickler refuses what it cannot read
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            path,
            f"refused to load: {_unpickling_reason(exc)}; segpipe never unpickles code",
            "in a trusted environment, load it and save only the weights: "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')",
        ) from None  # torch's message advises weights_only=False, which would run the file's code
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable torch checkpoint: {exc}", "re-save it with torch.save(model.state_dict(), ...)") from exc


def _unpickling_reason(exc: Exception) -> str:
    """What the restricted unpickler refused, in segpipe's words (torch's own advice is dropped)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"the pickle references '{found.group(1)}', not only tensors and containers "
            "(a whole model saved with torch.save(model), or code)"
        )
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"the pickle uses opcode {found.group(1)}, which a weights-only load does not allow"
    return "the pickle holds objects beyond tensors and containers"


def _as_state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(raw, Mapping):
            nested = next((raw[k] for k in _NESTING_KEYS if isinstance(raw.get(k), Mapping)), None)
            if nested is not None:
                raw = nested
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(path, f"holds {type(raw).__name__}, not a state_dict", "save model.state_dict() rather than the model")
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"entries are not tensors: {_first([str(k) for k in bad])}", "save only model.state_dict()")
    prefix = "module."
    if all(str(k).startswith(prefix) for k in raw):
        return {str(k)[len(prefix):]: v for k, v in raw.items()}
    return {str(k): v for k, v in raw.items()}


def _first(names: list[str]) -> str:
    head = ", ".join(names[:_LISTED])
    return head + (f", ... (+{len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
