"""``monai-bundle``: a network from a local MONAI bundle folder, without network access.

``params: {bundle: PATH}`` (relative to the spec file). The network is ``network_def`` from
``configs/inference.json`` (or ``.yaml``/``.yml``), instantiated with ``monai.bundle.ConfigParser``;
weights are ``models/model.pt`` read as a plain state_dict (``torch.load(weights_only=True)``).
A spec ``checkpoint:`` overrides the bundle's weights. A bundle config can run Python expressions
(``$...``): use bundles you trust, as you would an import-path architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.architectures._common import resolve_params, where
from models.registry import register
from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

DEFAULTS = {
    "bundle": None,
    "config": None,  # default: the first of configs/inference.{json,yaml,yml}
    "network_key": "network_def",
    "weights": "models/model.pt",  # null: leave the network at random init
}
CONFIG_CANDIDATES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")


@register("monai-bundle")
def build_monai_bundle(spec: ModelSpec) -> torch.nn.Module:
    """Instantiate a bundle's network definition and load its weights."""
    from models.checkpoint import apply_state_dict, load_state_dict_file, mark_weights_loaded

    p = resolve_params(spec, DEFAULTS)
    if not p["bundle"]:
        raise ModelSpecError(where(spec), "monai-bundle needs params.bundle", "set params: {bundle: path/to/bundle_folder}")
    bundle = _anchor(Path(p["bundle"]), spec)
    if not bundle.is_dir():
        raise ModelSpecError(bundle, "MONAI bundle folder not found", "give a local bundle folder in params.bundle (downloads are not supported)")
    network = _instantiate(bundle, _config_file(bundle, p["config"]), p["network_key"])
    if spec.checkpoint is not None or p["weights"] is None:
        return network  # load_model applies spec.checkpoint, or warns about random init
    weights = bundle / p["weights"]
    apply_state_dict(network, load_state_dict_file(weights), source=weights)
    return mark_weights_loaded(network, weights)


def _anchor(path: Path, spec: ModelSpec) -> Path:
    return path if path.is_absolute() or spec.source is None else spec.source.parent / path


def _config_file(bundle: Path, name: str | None) -> Path:
    candidates = (name,) if name else CONFIG_CANDIDATES
    for candidate in candidates:
        if (bundle / candidate).is_file():
            return bundle / candidate
    raise ModelSpecError(bundle, f"no bundle config found (looked for {', '.join(candidates)})", "add configs/inference.json or set params.config")


def _instantiate(bundle: Path, config: Path, key: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    if key not in parser.get():
        keys = ", ".join(sorted(parser.get())) or "none"
        raise ModelSpecError(config, f"no '{key}' in the bundle config (top-level keys: {keys})", "set params.network_key")
    try:
        network = parser.get_parsed_content(key, instantiate=True)
    except Exception as exc:  # noqa: BLE001 - bundle configs can fail in any component they name
        raise ModelSpecError(config, f"cannot instantiate '{key}': {exc}", "check the bundle's network definition") from exc
    if not isinstance(network, torch.nn.Module):
        raise ModelSpecError(config, f"'{key}' built {type(network).__name__}, not a torch.nn.Module", "point network_key at the network definition")
    return network
