"""``unet``: MONAI's residual U-Net, 2D for ``task: raster`` and 3D for ``task: volume``."""

from __future__ import annotations

import torch

from models.architectures._common import (
    as_layer_arg,
    construct,
    require_divisible,
    resolve_params,
    total_stride,
    where,
)
from models.registry import register
from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

DEFAULTS = {
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "kernel_size": 3,
    "up_kernel_size": 3,
    "num_res_units": 1,
    "act": "PRELU",
    "norm": "INSTANCE",
    "dropout": 0.0,
    "bias": True,
    "adn_ordering": "NDA",
}


@register("unet")
def build_unet(spec: ModelSpec) -> torch.nn.Module:
    """``monai.networks.nets.UNet`` with ``spatial_dims`` from the task; params override :data:`DEFAULTS`.

    The window must be a multiple of the product of ``strides`` so the decoder returns to window size.
    """
    from monai.networks.nets import UNet

    p = resolve_params(spec, DEFAULTS)
    if len(p["strides"]) != len(p["channels"]) - 1:
        raise ModelSpecError(
            where(spec),
            f"unet has {len(p['channels'])} channels but {len(p['strides'])} strides",
            "give one stride fewer than channels, e.g. channels [16, 32, 64], strides [2, 2]",
        )
    require_divisible(spec, total_stride(p["strides"]), "product of strides")
    return construct(
        spec,
        UNet,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.n_classes,
        channels=tuple(p["channels"]),
        strides=tuple(p["strides"]),
        kernel_size=p["kernel_size"],
        up_kernel_size=p["up_kernel_size"],
        num_res_units=p["num_res_units"],
        act=as_layer_arg(p["act"]),
        norm=as_layer_arg(p["norm"]),
        dropout=p["dropout"],
        bias=p["bias"],
        adn_ordering=p["adn_ordering"],
    )
