"""The model spec: a YAML file or a ``catalogs/`` entry describing a segmentation model.

See ``../shared/docs/mission.md`` ("Model spec") for the contract. Validation happens once, here,
at the edge; everything downstream receives a frozen :class:`ModelSpec`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models._fields import check_keys, color, integer, number, number_list, text
from pipeline.errors import ModelSpecError
from pipeline.yaml_files import read_yaml_mapping

Task = Literal["raster", "volume"]
Blend = Literal["gaussian", "constant"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def catalog_dirs() -> list[Path]:
    """Folders searched for model names: ``$SEGPIPE_CATALOGS`` (os.pathsep-separated), then ``catalogs/models``."""
    extra = [Path(p) for p in os.environ.get("SEGPIPE_CATALOGS", "").split(os.pathsep) if p]
    return [*extra, REPO_ROOT / "catalogs" / "models"]


@dataclass(frozen=True)
class ClassInfo:
    """One output class: ``id`` is the label value written out."""

    id: int
    name: str
    color: str = "#808080"

    @property
    def rgb(self) -> tuple[int, int, int]:
        c = self.color.lstrip("#")
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))


@dataclass(frozen=True)
class Normalize:
    """Intensity normalisation: ``none``, ``meanstd`` (per channel), ``window`` (clip to [min, max], scale to [0, 1]),
    ``zscore`` (per volume, on the foreground) or ``scale`` (multiply by ``factor``)."""

    kind: Literal["none", "meanstd", "window", "zscore", "scale"] = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    min: float | None = None
    max: float | None = None
    factor: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A validated model spec. Windows are ``(Y, X)`` for rasters and ``(Z, Y, X)`` for volumes (voxels)."""

    name: str
    task: Task
    architecture: str
    in_channels: int
    classes: tuple[ClassInfo, ...]
    window: tuple[int, ...]
    overlap: float = 0.25
    blend: Blend = "gaussian"
    normalize: Normalize = field(default_factory=Normalize)
    spacing: tuple[float, ...] | None = None
    checkpoint: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    nodata: int = 255
    orientation: str | None = None
    source: Path | None = None

    @property
    def n_classes(self) -> int:
        """Number of logit channels the network emits (one per class, in the order listed)."""
        return len(self.classes)

    @property
    def spatial_dims(self) -> int:
        return 2 if self.task == "raster" else 3

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """Turn a catalog name or a YAML path into an existing file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise ModelSpecError(candidate, "model spec file not found", "give an existing YAML file or a name from `segpipe models`")
        return candidate
    for folder in catalog_dirs():
        for suffix in (".yaml", ".yml"):
            path = folder / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    known = sorted(p.stem for d in catalog_dirs() if d.is_dir() for p in d.glob("*.y*ml"))
    raise ModelSpecError(str(name_or_path), "unknown model", f"known models: {', '.join(known) or 'none'}; or give a path to a YAML spec")


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """Load and validate a model spec from a catalog name or a YAML path."""
    path = resolve_spec_path(name_or_path)
    raw = read_yaml_mapping(path, what="a model spec", help_for_keys="see the model spec in the README", error=ModelSpecError)
    return spec_from_dict(raw, source=path)


#: Top-level keys of a spec; anything else is refused (a typo like ``checkpiont`` would otherwise be ignored).
SPEC_KEYS = (
    "name", "task", "architecture", "params", "in_channels", "classes", "window", "overlap", "blend",
    "normalize", "spacing", "checkpoint", "nodata", "orientation",
)
CLASS_KEYS = ("id", "name", "color")
#: The keys each normalisation kind takes.
NORMALIZE_KEYS: dict[str, tuple[str, ...]] = {
    "none": ("kind",),
    "meanstd": ("kind", "mean", "std"),
    "window": ("kind", "min", "max"),
    "zscore": ("kind",),
    "scale": ("kind", "factor"),
}
#: Largest label value: labels are written as uint8, or uint16 when an id or nodata exceeds 255.
MAX_LABEL = 65535


def spec_from_dict(raw: dict[str, Any], *, source: Path | None = None) -> ModelSpec:
    """Validate a spec mapping; ``source`` (the YAML file) anchors a relative checkpoint path.

    Raises:
        ModelSpecError: an unknown key, a missing key, a value of the wrong type or out of range; the
            message names ``source``, the key and the fix.
    """
    where = source or "<model spec>"
    check_keys(raw, SPEC_KEYS, where, "the model spec", "see the model spec in the README.")

    def need(key: str) -> Any:
        if key not in raw:
            raise ModelSpecError(where, f"missing required key '{key}'", "see the model spec in the README")
        return raw[key]

    task = need("task")
    if task not in ("raster", "volume"):
        raise ModelSpecError(where, f"task must be 'raster' or 'volume', got {task!r}", "set task: raster or task: volume")
    window = _parse_window(need("window"), task, where)
    classes = _parse_classes(need("classes"), where)
    overlap = number(raw.get("overlap", 0.25), "overlap", where, "use 0 <= overlap < 1, e.g. overlap: 0.25")
    if not 0.0 <= overlap < 1.0:
        raise ModelSpecError(where, f"overlap {overlap} out of range", "use 0 <= overlap < 1")
    blend = raw.get("blend", "gaussian")
    if blend not in ("gaussian", "constant"):
        raise ModelSpecError(where, f"blend must be gaussian or constant, got {blend!r}", "set blend: gaussian")
    in_channels = integer(need("in_channels"), "in_channels", where, "give the number of input bands/channels, e.g. in_channels: 4")
    if in_channels < 1:
        raise ModelSpecError(where, f"in_channels must be >= 1, got {in_channels}", "set in_channels")
    spacing = raw.get("spacing")
    if spacing is not None:
        spacing = number_list(spacing, "spacing", where, "give 3 millimetre sizes [z, y, x], or null")
        if task != "volume" or len(spacing) != 3 or min(spacing) <= 0:
            raise ModelSpecError(where, f"spacing {list(spacing)} invalid", "give 3 positive millimetre sizes [z, y, x] for volume models, or null")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ModelSpecError(where, f"params must be a mapping of names to values, got {params!r}", "write params: {key: value}")
    normalize = _parse_normalize(raw.get("normalize"), where)
    _check_normalize(normalize, in_channels, where)
    name = raw.get("name")
    orientation = raw.get("orientation")
    if orientation is not None and task != "volume":  # a raster is read on its own grid: nothing would reorient it
        raise ModelSpecError(where, f"orientation {orientation!r} is set on a {task} model", "remove orientation: (it applies to volume models), or null")
    return ModelSpec(
        name=(source.stem if source else "model") if name is None else text(name, "name", where, "write name: my-model"),
        task=task,
        architecture=text(need("architecture"), "architecture", where, "write architecture: unet, or 'package.module:callable'"),
        in_channels=in_channels,
        classes=classes,
        window=window,
        overlap=overlap,
        blend=blend,
        normalize=normalize,
        spacing=spacing,
        checkpoint=_parse_checkpoint(raw.get("checkpoint"), source, where),
        params=dict(params),
        nodata=_parse_nodata(raw.get("nodata", 255), classes, where),
        orientation=None if orientation is None else text(orientation, "orientation", where, "give axis codes such as RAS, or null"),
        source=source,
    )


def _parse_window(value: Any, task: str, where: Any) -> tuple[int, ...]:
    dims = 2 if task == "raster" else 3
    axes = "[y, x]" if dims == 2 else "[z, y, x]"
    fix = f"give {dims} positive integer sizes {axes}, e.g. window: {[64] * dims}"
    if not isinstance(value, (list, tuple)):
        raise ModelSpecError(where, f"window must be a list of {dims} sizes {axes}, got {value!r}", fix)
    window = tuple(integer(w, "window", where, fix) for w in value)
    if len(window) != dims or min(window) < 1:
        raise ModelSpecError(where, f"window {list(window)} does not fit task '{task}'", f"give {dims} positive sizes {axes}")
    if math.prod(window) > MAX_WINDOW_ELEMENTS:
        raise ModelSpecError(
            where,
            f"window {list(window)} holds {math.prod(window):,} pixels/voxels, more than {MAX_WINDOW_ELEMENTS:,}",
            f"use the window the network was trained on (typically 256-1024 per side in 2D, 64-192 in 3D); at most {MAX_WINDOW_ELEMENTS:,} in all",
        )
    return window


MAX_WINDOW_ELEMENTS = 2**26
"""Largest window (pixels or voxels), e.g. 8192 x 8192 or 406^3: one float32 window of 4 channels is
then 1 GiB before any activation; a `window: [60000, 60000]` typo asked for 57.6 GB at the probe."""


def _parse_checkpoint(value: Any, source: Path | None, where: Any) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ModelSpecError(where, f"checkpoint must be a file path, got {value!r}", "write checkpoint: weights.safetensors (relative to the spec), or null")
    checkpoint = Path(value)
    if not checkpoint.is_absolute() and source is not None:
        checkpoint = Path(os.path.normpath(source.parent / checkpoint))
    return checkpoint


def _parse_nodata(value: Any, classes: tuple[ClassInfo, ...], where: Any) -> int:
    fix = f"choose an integer in 0..{MAX_LABEL} outside the class ids, e.g. nodata: 255"
    nodata = integer(value, "nodata", where, fix)
    if not 0 <= nodata <= MAX_LABEL:
        raise ModelSpecError(where, f"nodata {nodata} is outside the label range 0..{MAX_LABEL} (uint8 labels, uint16 above 255)", fix)
    if nodata in {c.id for c in classes}:
        raise ModelSpecError(where, f"nodata value {nodata} is also a class id", "choose a nodata value outside the class ids")
    return nodata


def _parse_classes(raw: Any, where: Any) -> tuple[ClassInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise ModelSpecError(where, "classes must be a non-empty list of {id, name, color}", "list at least one class")
    example = "write - {id: 0, name: water, color: '#1f78b4'}"
    classes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "id" not in item or "name" not in item:
            raise ModelSpecError(where, f"class entry {item!r} needs 'id' and 'name'", example)
        check_keys(item, CLASS_KEYS, where, f"class entry {item!r}", example + ".")
        classes.append(
            ClassInfo(
                id=integer(item["id"], f"classes[{i}].id", where, "give every class an integer id (the label value written out)"),
                name=text(item["name"], f"classes[{i}].name", where, "give every class a name"),
                color=color(item.get("color", "#808080"), f"classes[{i}].color", where),
            )
        )
    ids = [c.id for c in classes]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ModelSpecError(where, f"class ids are not unique: {dupes}", "give every class its own id")
    names = [c.name for c in classes]
    dupe_names = sorted({n for n in names if names.count(n) > 1})
    if dupe_names:
        raise ModelSpecError(where, f"class names are not unique: {dupe_names}", "give every class its own name")
    if min(ids) < 0 or max(ids) > MAX_LABEL - 1:
        raise ModelSpecError(where, f"class ids must lie in 0..{MAX_LABEL - 1}, got {min(ids)}..{max(ids)}", "renumber the classes")
    return tuple(classes)


def _parse_normalize(raw: Any, where: Any) -> Normalize:
    if raw is None:
        raw = {"kind": "none"}
    if not isinstance(raw, dict) or raw.get("kind", "none") not in NORMALIZE_KEYS:
        raise ModelSpecError(where, f"normalize {raw!r} not understood", "use kind: none | meanstd | window | zscore | scale")
    kind = raw.get("kind", "none")
    takes = ", ".join(NORMALIZE_KEYS[kind][1:]) or "no other keys"
    check_keys(raw, NORMALIZE_KEYS[kind], where, f"normalize (kind: {kind})", f"kind {kind} takes {takes}.")

    def optional(key: str) -> float | None:
        value = raw.get(key)
        return None if value is None else number(value, f"normalize {key}", where, f"write normalize: {{kind: {kind}, {key}: <number>}}")

    factor = number(raw.get("factor", 1.0), "normalize factor", where, "write normalize: {kind: scale, factor: 0.00392}")
    if factor == 0:
        raise ModelSpecError(where, "normalize scale factor 0 erases the image", "give a non-zero factor, e.g. 0.00392 for 8-bit data")
    fix = "give one number per channel, e.g. normalize: {kind: meanstd, mean: [0.5], std: [0.25]}"
    return Normalize(
        kind=kind,
        mean=number_list(raw.get("mean", []), "normalize mean", where, fix),
        std=number_list(raw.get("std", []), "normalize std", where, fix),
        min=optional("min"),
        max=optional("max"),
        factor=factor,
    )


def _check_normalize(norm: Normalize, in_channels: int, where: Any) -> None:
    if norm.kind == "meanstd":
        if not norm.mean or len(norm.mean) != len(norm.std) or len(norm.mean) not in (1, in_channels):
            raise ModelSpecError(
                where,
                f"normalize meanstd has {len(norm.mean)} means and {len(norm.std)} stds for {in_channels} channels",
                "give one mean and one std per channel, or one of each for all channels",
            )
        if min(norm.std) <= 0:
            raise ModelSpecError(where, f"normalize std values must be positive, got {list(norm.std)}", "fix std")
    if norm.kind == "window" and (norm.min is None or norm.max is None or not norm.max > norm.min):
        raise ModelSpecError(
            where, f"normalize window needs min < max, got min={norm.min} max={norm.max}", "write normalize: {kind: window, min: -1000, max: 1000}"
        )
