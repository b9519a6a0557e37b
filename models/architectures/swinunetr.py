"""``swinunetr``: MONAI's SwinUNETR (Swin transformer encoder, CNN decoder); 3D for volumes, 2D for rasters."""

from __future__ import annotations

import importlib.util

import torch

from models.architectures._common import construct, require_divisible, resolve_params, where
from models.registry import register
from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

DEFAULTS = {
    "feature_size": 24,  # must be a multiple of 12
    "depths": [2, 2, 2, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "patch_size": 2,
    "norm_name": "instance",
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "dropout_path_rate": 0.0,
    "use_checkpoint": False,
    "use_v2": False,
}


@register("swinunetr")
def build_swinunetr(spec: ModelSpec) -> torch.nn.Module:
    """``monai.networks.nets.SwinUNETR``; the window must be a multiple of ``16 * patch_size`` (32 by default)."""
    from monai.networks.nets import SwinUNETR

    if importlib.util.find_spec("einops") is None:
        raise ModelSpecError(where(spec), "architecture 'swinunetr' needs the einops package", "pip install einops")
    p = resolve_params(spec, DEFAULTS)
    factor = 16 * int(p["patch_size"])
    require_divisible(spec, factor, f"SwinUNETR downsamples by patch_size x 16 = {factor}")
    if all(w == factor for w in spec.window) and "instance" in str(p["norm_name"]).lower():
        raise ModelSpecError(
            where(spec),
            f"window {list(spec.window)} leaves a 1-voxel bottleneck, which instance norm cannot normalise",
            f"use at least {2 * factor} along one axis",
        )
    return construct(
        spec,
        SwinUNETR,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.n_classes,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()},
    )
