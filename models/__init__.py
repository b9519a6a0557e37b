"""Model specs, the architecture registry, checkpoint loading and training."""

from models.spec import ClassInfo, ModelSpec, Normalize, load_spec, spec_from_dict

__all__ = ["ClassInfo", "ModelSpec", "Normalize", "load_spec", "spec_from_dict"]
