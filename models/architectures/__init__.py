"""Built-in architecture builders, one module each; importing this package registers them.

Imported by :mod:`models.registry`; each module imports MONAI or transformers only inside its builder.
"""

from models.architectures import deeplabv3plus, monai_bundle, segformer, segresnet, swinunetr, unet

__all__ = ["deeplabv3plus", "monai_bundle", "segformer", "segresnet", "swinunetr", "unet"]
