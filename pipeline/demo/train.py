"""Train the two demo checkpoints on synthetic data with the project's own trainer (:func:`models.train.train`).

Reproduce the shipped weights (CPU, a few minutes on 2 cores)::

    python -m pipeline.demo.train --out catalogs/weights

The training data are generated in memory from seeds that the demo never uses
(:data:`LANDCOVER_SEEDS`, :data:`CT_SEEDS`; the demo itself uses :data:`pipeline.demo.run.SCENE_SEED`
and :data:`pipeline.demo.run.PHANTOM_SEED`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.spec import REPO_ROOT, ModelSpec, load_spec

log = logging.getLogger(__name__)

DemoModel = Literal["landcover", "ct"]

LANDCOVER_SEEDS = tuple(range(101, 107))  # six 1024 x 1024 scenes (one held out for validation)
CT_SEEDS = tuple(range(201, 211))  # ten phantoms (two held out)


@dataclass(frozen=True)
class DemoTraining:
    """Which spec, which data seeds, and the trainer settings for one demo model."""

    spec_name: str
    seeds: tuple[int, ...]
    epochs: int
    steps_per_epoch: int
    batch_size: int
    lr: float
    val_fraction: float


PLANS: dict[str, DemoTraining] = {
    "landcover": DemoTraining("demo-landcover", LANDCOVER_SEEDS, epochs=8, steps_per_epoch=60, batch_size=8, lr=3e-3, val_fraction=0.17),
    "ct": DemoTraining("demo-ct", CT_SEEDS, epochs=16, steps_per_epoch=40, batch_size=2, lr=3e-3, val_fraction=0.2),
}


def training_pairs(model: DemoModel, seeds: Sequence[int]) -> list[tuple]:
    """In-memory ``(image, label)`` pairs: ``(C, Y, X)``/``(Y, X)`` scenes or ``(1, Z, Y, X)``/``(Z, Y, X)`` phantoms."""
    if model == "landcover":
        from pipeline.demo.scene import synthetic_scene

        return [synthetic_scene(seed) for seed in seeds]
    from pipeline.demo.phantom import synthetic_ct

    pairs = []
    for seed in seeds:
        hu, labels, _ = synthetic_ct(seed)
        pairs.append((hu[None], labels))
    return pairs


def train_demo_model(model: DemoModel, out_dir: str | Path, *, progress: Callable | None = None, spec: ModelSpec | None = None):
    """Train one demo model and write ``out_dir/<spec name>.safetensors``; returns the trainer's ``TrainResult``."""
    from models.train import TrainConfig, train

    plan = PLANS[model]
    spec = spec or load_spec(plan.spec_name)
    config = TrainConfig(
        epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, batch_size=plan.batch_size, lr=plan.lr,
        seed=0, val_fraction=plan.val_fraction, device="cpu",
    )
    pairs = training_pairs(model, plan.seeds)
    return train(spec, pairs, Path(out_dir) / f"{spec.name}.safetensors", config, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m pipeline.demo.train [--out DIR] [--only landcover|ct]``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo.train", description="Train the demo checkpoints on synthetic data.")
    parser.add_argument("--out", default=str(REPO_ROOT / "catalogs" / "weights"), help="folder for the .safetensors files (default: catalogs/weights)")
    parser.add_argument("--only", choices=sorted(PLANS), action="append", help="train only this model (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    def show(p) -> None:
        if p.step == p.steps:
            dice = "" if p.val_dice is None else f", validation mean Dice {p.val_dice:.3f}"
            print(f"  epoch {p.epoch}/{p.epochs}: loss {p.loss:.4f}{dice}", flush=True)

    for model in args.only or sorted(PLANS):
        print(f"training {PLANS[model].spec_name} ...", flush=True)
        result = train_demo_model(model, args.out, progress=show)
        print(f"  wrote {result.checkpoint} in {result.seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
