"""The shipped demo specs and checkpoints: they load, are small, and were trained on other seeds than the demo's."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import load_model
from models.spec import load_spec
from pipeline.demo import run, train


@pytest.mark.parametrize(("name", "task", "channels", "classes"), [("demo-landcover", "raster", 4, 5), ("demo-ct", "volume", 1, 7)])
def test_spec_loads_and_checkpoint_fits_and_is_small(name, task, channels, classes):
    spec = load_spec(name)
    assert (spec.task, spec.in_channels, spec.n_classes) == (task, channels, classes)
    assert spec.class_ids == tuple(range(classes))
    assert spec.checkpoint is not None and spec.checkpoint.suffix == ".safetensors"
    assert spec.checkpoint.stat().st_size < 1_000_000
    model = load_model(spec, "cpu")  # strict: every key and shape must match
    with torch.no_grad():
        logits = model(torch.zeros(1, channels, *spec.window))
    assert tuple(logits.shape) == (1, classes, *spec.window)


def test_demo_seeds_are_not_training_seeds():
    assert run.SCENE_SEED not in train.PLANS["landcover"].seeds
    assert run.PHANTOM_SEED not in train.PLANS["ct"].seeds


def test_training_plans_name_the_catalog_specs():
    assert train.PLANS["landcover"].spec_name == run.LANDCOVER_MODEL
    assert train.PLANS["ct"].spec_name == run.CT_MODEL
