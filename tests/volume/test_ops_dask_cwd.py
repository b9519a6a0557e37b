"""``segpipe volume REL1 REL2 --out REL --dask-address ...`` with Dask workers in another working directory.

Worker processes resolve relative paths against their own working directory; the batch must send
them absolute paths (inputs and ``--out``), as ``segpipe raster`` does, or every study fails with
"no such file" and an empty output folder appears in the workers' folder.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from pipeline.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _spec_yaml(vh, folder):
    spec = vh.per_voxel_spec(folder)  # writes the safetensors checkpoint into folder
    raw = {
        "name": "pv-ops", "task": "volume", "architecture": "torch.nn:Conv3d",
        "params": {"in_channels": 1, "out_channels": 3, "kernel_size": 1}, "in_channels": 1,
        "classes": [{"id": c.id, "name": c.name} for c in spec.classes], "window": [4, 8, 8],
        "normalize": {"kind": "window", "min": -1000, "max": 1000}, "checkpoint": spec.checkpoint.name,
    }
    path = folder / "pv-ops.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_relative_inputs_and_out_reach_workers_in_another_cwd(vh, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    here, elsewhere = tmp_path / "here", tmp_path / "workers-cwd"
    (here / "ct").mkdir(parents=True)
    elsewhere.mkdir()
    rng = np.random.default_rng(5)
    hu = {name: rng.choice(np.array([-1000, -300, 40, 500], np.int16), size=(6, 10, 12)) for name in ("s1", "s2")}
    for name, values in hu.items():
        vh.write_nifti(here / "ct" / f"{name}.nii.gz", values, vh.axis_affine("RAS"))
    spec = _spec_yaml(vh, here)
    monkeypatch.chdir(here)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            client.run(os.chdir, str(elsewhere))
            assert set(client.run(os.getcwd).values()) == {str(elsewhere)}
        code = main(["volume", "ct/s1.nii.gz", "ct/s2.nii.gz", "--model", str(spec), "--out", "out", "--device", "cpu",
                     "--dask-address", cluster.scheduler_address])
    assert code == 0
    import nibabel as nib

    for name, values in hu.items():
        labels = nib.load(str(here / "out" / f"{name}.labels.nii.gz"))
        np.testing.assert_array_equal(np.asarray(labels.dataobj).T, vh.per_voxel_answer(values))
    assert (here / "out" / "stats.zarr" / "zarr.json").is_file()
    assert list(elsewhere.iterdir()) == []  # nothing written relative to the workers' folder
