"""SIGTERM stops a ``segpipe volume`` run as Ctrl-C does: the study's half-written label file
(``.tmp-<pid>-<stem>.labels.nii.gz``) is removed, the study's lock released, the command says how to
resume and exits with 143; a rerun ends with the outputs of an uninterrupted run.

Before: Python's default SIGTERM action ended the process at once and left the temporary and the
lock file. A real ``segpipe`` process (``tests/sigterm_child.py``) sent SIGTERM by the kernel right
after the labels' temporary file was written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.cli import main
from pipeline.stats_store import open_stats
from pipeline.termination import MESSAGE

REPO = Path(__file__).resolve().parents[2]
CHILD = REPO / "tests" / "sigterm_child.py"


def _spec(folder: Path) -> Path:
    """A per-voxel model (``Conv3d``, kernel 1): soft tissue and dense from the windowed HU."""
    net = torch.nn.Conv3d(1, 3, kernel_size=1)
    with torch.no_grad():
        net.weight[:] = torch.tensor([0.0, 10.0, 20.0]).reshape(-1, 1, 1, 1, 1)
        net.bias[:] = torch.tensor([0.0, -4.5031, -10.0047])  # no integer HU on a tie (conftest.PV_BIAS): one float ulp flips a tie
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "pv.safetensors"))
    spec = {
        "name": "per-voxel", "task": "volume", "architecture": "torch.nn:Conv3d", "params": {"in_channels": 1, "out_channels": 3, "kernel_size": 1},
        "in_channels": 1, "classes": [{"id": 0, "name": "background"}, {"id": 1, "name": "soft"}, {"id": 2, "name": "dense"}],
        "window": [8, 16, 16], "overlap": 0.25, "normalize": {"kind": "window", "min": -1000, "max": 1000}, "checkpoint": "pv.safetensors",
    }
    path = folder / "pv.yaml"
    path.write_text(json.dumps(spec))
    return path


def _study(path: Path, vh) -> Path:
    hu = np.random.default_rng(2).integers(-1000, 1500, size=(12, 40, 48)).astype(np.int16)
    return vh.write_nifti(path, hu, vh.axis_affine("RAS"), qcode=1, scode=1)


def _outputs(out: Path) -> dict:
    labels = nib.load(out / "ct.labels.nii.gz")
    stats = open_stats(out / "stats.zarr")
    return {
        "files": sorted(p.name for p in out.iterdir()),
        "labels": np.asarray(labels.dataobj).tolist(),
        "affine": labels.affine.tolist(),
        "volume_ml": stats["volume_ml"].values.tolist(),
        "voxel_count": stats["voxel_count"].values.tolist(),
    }


def test_sigterm_while_the_labels_are_written_cleans_up_and_a_rerun_finishes(tmp_path, vh):
    study, spec = _study(tmp_path / "ct.nii.gz", vh), _spec(tmp_path)
    args = lambda out: ["volume", str(study), "--model", str(spec), "--out", str(out), "--device", "cpu"]  # noqa: E731
    assert main(args(tmp_path / "ref")) == 0

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, str(CHILD), "nibabel:save", "after", *args(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        timeout=180,
    )
    assert child.returncode == 143, child.stderr[-3000:]
    assert child.stderr.strip().splitlines()[-1] == MESSAGE
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert not [name for name in left if ".tmp-" in name or name.endswith(".lock")], left  # the labels' temporary was there when SIGTERM came
    assert not (out / "ct.labels.nii.gz").exists() and not (out / "ct.stats.json").exists()  # nothing that looks complete

    assert main(args(out)) == 0
    assert _outputs(out) == _outputs(tmp_path / "ref")
