"""``segformer``: Hugging Face transformers' SegFormer (hierarchical transformer + all-MLP decoder), 2D only.

Built from a ``SegformerConfig`` (defaults: the MiT-b0 sizes) with ``num_channels = in_channels`` and
``num_labels = n_classes``. SegFormer predicts at 1/4 resolution; :class:`SegformerLogits` upsamples
bilinearly to the window. No network access: ``params.pretrained`` may name a *local* folder written
by ``save_pretrained`` (relative paths are relative to the spec file), never a hub name.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models.architectures._common import construct, require_task, resolve_params, where
from models.registry import register
from models.spec import ModelSpec
from pipeline.errors import ModelSpecError

# SegformerConfig keys a spec may set, with MiT-b0 defaults
CONFIG_DEFAULTS = {
    "hidden_sizes": [32, 64, 160, 256],
    "depths": [2, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8],
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "mlp_ratios": [4, 4, 4, 4],
    "decoder_hidden_size": 256,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1,
    "drop_path_rate": 0.1,
    "layer_norm_eps": 1e-6,
}
_PER_STAGE = ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "patch_sizes", "strides", "mlp_ratios")


class SegformerLogits(torch.nn.Module):
    """Wraps ``SegformerForSemanticSegmentation``: ``(N, C, Y, X)`` -> logits ``(N, K, Y, X)`` at input size."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=x).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("segformer")
def build_segformer(spec: ModelSpec) -> torch.nn.Module:
    """SegFormer for a raster spec; params are ``SegformerConfig`` fields plus ``pretrained`` (local folder)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    require_task(spec, ("raster",), "SegFormer is 2D; use unet, segresnet or swinunetr for volumes")
    p = resolve_params(spec, {**CONFIG_DEFAULTS, "pretrained": None})
    pretrained = p.pop("pretrained")
    stages = {k: len(p[k]) for k in _PER_STAGE}
    if len(set(stages.values())) != 1:
        raise ModelSpecError(where(spec), f"segformer per-stage params differ in length: {stages}", "give every per-stage list one entry per stage")
    fields = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in p.items()}
    fields.update(num_encoder_blocks=stages["depths"], num_channels=spec.in_channels, num_labels=spec.n_classes)
    if pretrained is None:
        config = construct(spec, SegformerConfig, **fields)
        return SegformerLogits(construct(spec, SegformerForSemanticSegmentation, config=config))
    from models.checkpoint import mark_weights_loaded

    folder = Path(pretrained)
    if not folder.is_absolute() and spec.source is not None:
        folder = spec.source.parent / folder
    return mark_weights_loaded(SegformerLogits(_from_local_folder(folder, fields)), folder)


def _from_local_folder(folder: Path, fields: dict) -> torch.nn.Module:
    from transformers import SegformerForSemanticSegmentation

    if not (folder / "config.json").is_file():
        raise ModelSpecError(
            folder,
            "pretrained SegFormer folder not found (no config.json)",
            "params.pretrained must be a local folder written by save_pretrained; hub downloads are not supported",
        )
    try:
        model = SegformerForSemanticSegmentation.from_pretrained(
            folder,
            local_files_only=True,
            num_channels=fields["num_channels"],
            num_labels=fields["num_labels"],
            ignore_mismatched_sizes=True,  # layers whose shape changed (classifier, patch embedding) start fresh
        )
    except (OSError, ValueError) as exc:
        raise ModelSpecError(folder, f"cannot load pretrained SegFormer: {exc}", "check the folder's config.json and weights") from exc
    return model
