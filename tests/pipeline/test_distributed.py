"""The engine's blocks on a real Dask LocalCluster with worker processes give the local labels."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import zarr
from monai.networks.nets import UNet
from safetensors.torch import save_file

from models.checkpoint import load_model
from models.spec import ModelSpec, spec_from_dict
from pipeline.distributed import ZarrRef, run_engine_dask
from pipeline.engine import EngineConfig, run_engine


def unet_spec(tmp_path, dims: int, in_ch: int, classes: int) -> ModelSpec:
    """A small MONAI UNet spec with a safetensors checkpoint, as a user would ship it."""
    params = {"spatial_dims": dims, "in_channels": in_ch, "out_channels": classes, "channels": [8, 16], "strides": [2]}
    torch.manual_seed(11)
    save_file(UNet(**params).state_dict(), str(tmp_path / "unet.safetensors"))
    raw = {
        "name": "tiny-unet", "task": "raster" if dims == 2 else "volume", "architecture": "monai.networks.nets:UNet",
        "params": params, "in_channels": in_ch, "classes": [{"id": i, "name": f"c{i}"} for i in (0, 3, 4, 9)][:classes],
        "window": [64, 64] if dims == 2 else [16, 24, 24], "checkpoint": "unet.safetensors",
    }
    return spec_from_dict(raw, source=tmp_path / "tiny-unet.yaml")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_local_cluster_labels_identical_to_local_run(client, tmp_path, dims):
    rng = np.random.default_rng(dims)
    shape = (3, 300, 260) if dims == 2 else (1, 40, 50, 45)
    window = (64, 64) if dims == 2 else (16, 24, 24)
    block = (128, 128) if dims == 2 else (24, 32, 32)
    store = str(tmp_path / "run.zarr")
    root = zarr.open_group(store, mode="w")
    root.create_array("image", shape=shape, chunks=(shape[0], *block), dtype="float32")[...] = rng.normal(size=shape).astype(np.float32)
    root.create_array("labels", shape=shape[1:], chunks=block, dtype="uint8")
    grid_shape = tuple(-(-s // b) for s, b in zip(shape[1:], block))
    root.create_array("done", shape=grid_shape, chunks=(1,) * dims, dtype="uint8", fill_value=0)
    cfg = EngineConfig(window=window, overlap=0.5, block=block, device="cpu", class_ids=(0, 3, 4, 9))

    factory = functools.partial(load_model, unet_spec(tmp_path, dims, shape[0], 4), "cpu")
    report = run_engine_dask(
        client, ZarrRef(store, "image"), f"cnn{dims}", factory, cfg, ZarrRef(store, "labels"), done=ZarrRef(store, "done")
    )
    local = zarr.create_array(store={}, shape=shape[1:], chunks=block, dtype="uint8")
    run_engine(root["image"], factory(), cfg, local)
    assert len(np.unique(local[...])) > 1

    assert np.array_equal(zarr.open_array(store, path="labels")[...], local[...])
    assert zarr.open_array(store, path="done")[...].all()
    assert report.windows_run == report.windows_total


def test_a_done_record_of_another_block_grid_is_refused_before_any_task(tmp_path):
    """As run_engine: a ``done`` array not shaped like the block grid (a store made with another
    block size) is an EngineError before anything is submitted (the client is never used)."""
    from pipeline.errors import EngineError

    store = str(tmp_path / "run.zarr")
    root = zarr.open_group(store, mode="w")
    root.create_array("image", shape=(1, 100, 100), chunks=(1, 50, 50), dtype="float32")
    root.create_array("labels", shape=(100, 100), chunks=(50, 50), dtype="uint8")
    root.create_array("done", shape=(3, 3), chunks=(1, 1), dtype="uint8", fill_value=0)
    cfg = EngineConfig(window=(32, 32), block=(50, 50), device="cpu")
    with pytest.raises(EngineError, match=r"done array shape \(3, 3\) != block grid \(2, 2\)"):
        run_engine_dask(None, ZarrRef(store, "image"), "m", torch.nn.Identity, cfg, ZarrRef(store, "labels"), done=ZarrRef(store, "done"))
