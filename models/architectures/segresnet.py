"""``segresnet``: MONAI's SegResNet (Myronenko 2018, without the VAE branch); 3D for volumes, 2D for rasters."""

from __future__ import annotations

import torch

from models.architectures._common import as_layer_arg, construct, require_divisible, resolve_params
from models.registry import register
from models.spec import ModelSpec

DEFAULTS = {
    "init_filters": 8,
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "dropout_prob": None,
    "act": ["RELU", {"inplace": True}],
    "norm": ["GROUP", {"num_groups": 8}],
    "upsample_mode": "nontrainable",
}


@register("segresnet")
def build_segresnet(spec: ModelSpec) -> torch.nn.Module:
    """``monai.networks.nets.SegResNet``; the window must be a multiple of ``2 ** (len(blocks_down) - 1)``."""
    from monai.networks.nets import SegResNet

    p = resolve_params(spec, DEFAULTS)
    require_divisible(spec, 2 ** (len(p["blocks_down"]) - 1), "SegResNet halves the grid at each level after the first")
    return construct(
        spec,
        SegResNet,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.n_classes,
        init_filters=p["init_filters"],
        blocks_down=tuple(p["blocks_down"]),
        blocks_up=tuple(p["blocks_up"]),
        dropout_prob=p["dropout_prob"],
        act=as_layer_arg(p["act"]),
        norm=as_layer_arg(p["norm"]),
        upsample_mode=p["upsample_mode"],
    )
