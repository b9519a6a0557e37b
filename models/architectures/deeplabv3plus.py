"""``deeplabv3plus``: DeepLabV3+ (Chen et al. 2018) from plain torch layers, 2D or 3D.

Encoder: a small ResNet-style network whose last stages trade stride for dilation (atrous
convolution), giving an output stride of 8 or 16. ASPP: a 1x1 branch, three atrous 3x3 branches and
image pooling. Decoder (the "+" of v3+): ASPP features upsampled to the stride-4 skip features,
concatenated with a 1x1-reduced copy of them, two 3x3 convolutions, a 1x1 classifier, and logits
upsampled (bilinear; trilinear in 3D) to the window size. Works for any window size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.architectures._common import construct, resolve_params, where
from models.registry import register
from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

NormKind = Literal["batch", "instance", "group"]

DEFAULTS = {
    "output_stride": 16,
    "widths": [32, 64, 128, 256],  # encoder stages 1..4 (stage 1 output, stride 4, is the skip)
    "blocks": [2, 2, 2, 2],  # residual blocks per stage (ResNet-18 layout)
    "atrous_rates": None,  # None: [6, 12, 18] at output stride 16, doubled at 8
    "aspp_channels": 128,
    "low_level_channels": 48,
    "decoder_channels": 128,
    "norm": "batch",
    "dropout": 0.1,
}

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _norm(kind: NormKind, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return _BATCH[dims](channels)
    if kind == "instance":
        return _INSTANCE[dims](channels, affine=True)
    return nn.GroupNorm(min(8, channels), channels)


def _conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Module:
    return _CONV[dims](cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, bias=False)


class ConvNormAct(nn.Sequential):
    """Convolution, normalisation, ReLU."""

    def __init__(self, dims: int, cin: int, cout: int, norm: NormKind, kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__(_conv(dims, cin, cout, kernel, stride, dilation), _norm(norm, dims, cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """ResNet basic block; ``dilation`` > 1 keeps resolution while widening the receptive field."""

    def __init__(self, dims: int, cin: int, cout: int, norm: NormKind, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(dims, cin, cout, norm, 3, stride, dilation)
        self.conv2 = nn.Sequential(_conv(dims, cout, cout, 3, 1, dilation), _norm(norm, dims, cout))
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(_conv(dims, cin, cout, 1, stride), _norm(norm, dims, cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def _stage(dims: int, cin: int, cout: int, n: int, norm: NormKind, stride: int, dilation: int) -> nn.Sequential:
    # the first block of a dilated stage uses the previous dilation, as in torchvision's ResNet
    first = ResBlock(dims, cin, cout, norm, stride, max(1, dilation // 2) if stride == 1 else 1)
    return nn.Sequential(first, *(ResBlock(dims, cout, cout, norm, 1, dilation) for _ in range(n - 1)))


class AtrousEncoder(nn.Module):
    """Returns (skip features at stride 4, deep features at ``output_stride``)."""

    def __init__(self, dims: int, in_channels: int, widths: list[int], blocks: list[int], output_stride: int, norm: NormKind):
        super().__init__()
        w1, w2, w3, w4 = widths
        s3, d3, d4 = (2, 1, 2) if output_stride == 16 else (1, 2, 4)
        self.stem = nn.Sequential(ConvNormAct(dims, in_channels, w1, norm, 3, 2), ConvNormAct(dims, w1, w1, norm))
        self.stage1 = _stage(dims, w1, w1, blocks[0], norm, 2, 1)  # stride 4
        self.stage2 = _stage(dims, w1, w2, blocks[1], norm, 2, 1)  # stride 8
        self.stage3 = _stage(dims, w2, w3, blocks[2], norm, s3, d3)  # stride 16 or 8
        self.stage4 = _stage(dims, w3, w4, blocks[3], norm, 1, d4)  # same stride, dilated

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.stage1(self.stem(x))
        return low, self.stage4(self.stage3(self.stage2(low)))


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average, 1x1 conv, broadcast back. No norm (it sees one value per channel)."""

    def __init__(self, dims: int, cin: int, cout: int):
        super().__init__()
        self.conv = _CONV[dims](cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        return F.relu(self.conv(pooled)).expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, one 3x3 branch per rate, image pooling; concatenated and projected."""

    def __init__(self, dims: int, cin: int, cout: int, rates: list[int], norm: NormKind, dropout: float):
        super().__init__()
        branches = [ConvNormAct(dims, cin, cout, norm, 1)]
        branches += [ConvNormAct(dims, cin, cout, norm, 3, 1, r) for r in rates]
        self.branches = nn.ModuleList([*branches, ImagePooling(dims, cin, cout)])
        self.project = nn.Sequential(ConvNormAct(dims, cout * len(self.branches), cout, norm, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ mapping ``(N, C, *spatial)`` to logits ``(N, K, *spatial)``; ``spatial`` is (Y, X) or (Z, Y, X)."""

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        output_stride: Literal[8, 16] = 16,
        widths: list[int] = DEFAULTS["widths"],
        blocks: list[int] = DEFAULTS["blocks"],
        atrous_rates: list[int] | None = None,
        aspp_channels: int = 128,
        low_level_channels: int = 48,
        decoder_channels: int = 128,
        norm: NormKind = "batch",
        dropout: float = 0.1,
    ):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        if len(widths) != 4 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"widths and blocks need 4 entries (blocks >= 1), got {widths} and {blocks}")
        if norm not in ("batch", "instance", "group"):
            raise ValueError(f"norm must be batch, instance or group, got {norm!r}")
        rates = list(atrous_rates) if atrous_rates else [r * 16 // output_stride for r in (6, 12, 18)]
        d = spatial_dims
        self.mode = "bilinear" if d == 2 else "trilinear"
        self.encoder = AtrousEncoder(d, in_channels, list(widths), list(blocks), output_stride, norm)
        self.aspp = ASPP(d, widths[3], aspp_channels, rates, norm, dropout)
        self.reduce = ConvNormAct(d, widths[0], low_level_channels, norm, 1)
        self.decoder = nn.Sequential(
            ConvNormAct(d, aspp_channels + low_level_channels, decoder_channels, norm),
            ConvNormAct(d, decoder_channels, decoder_channels, norm),
        )
        self.classifier = _CONV[d](decoder_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, deep = self.encoder(x)
        deep = F.interpolate(self.aspp(deep), size=low.shape[2:], mode=self.mode, align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([deep, self.reduce(low)], dim=1)))
        return F.interpolate(logits, size=x.shape[2:], mode=self.mode, align_corners=False)


@register("deeplabv3plus")
def build_deeplabv3plus(spec: ModelSpec) -> torch.nn.Module:
    """DeepLabV3+ for the spec: 2D for rasters, 3D for volumes; params override :data:`DEFAULTS`."""
    p = resolve_params(spec, DEFAULTS)
    if p["output_stride"] not in (8, 16):
        raise ModelSpecError(where(spec), f"output_stride {p['output_stride']} not supported", "use output_stride: 8 or 16")
    return construct(spec, DeepLabV3Plus, spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.n_classes, **p)
