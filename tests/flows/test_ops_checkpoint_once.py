"""A model whose checkpoint file is missing is refused once, before any study or scene runs
(``segpipe volume`` with or without ``--dask-address``, and both flows), not once per item."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from models.spec import load_spec
from pipeline.errors import CheckpointError


@pytest.fixture
def studies(tmp_path):
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(path))
        paths.append(str(path))
    return paths


def test_cli_refuses_a_model_without_weights_once(studies, tmp_path, capsys):
    from pipeline.cli import main

    assert load_spec("ct-organs-unet").checkpoint is not None and not load_spec("ct-organs-unet").checkpoint.is_file()
    code = main(["volume", *studies, "--model", "ct-organs-unet", "--out", str(tmp_path / "out"), "--device", "cpu", "--dask-address", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("checkpoint file not found") == 1 and "model 'ct-organs-unet'" in err and "segpipe train" in err
    assert not (tmp_path / "out").exists()


def test_library_batch_refuses_before_any_study(studies, tmp_path):
    from pipeline.volume.batch import segment_volumes

    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        segment_volumes(studies, load_spec("ct-organs-unet"), tmp_path / "out")


@pytest.mark.usefixtures("prefect_server")
def test_flows_fail_once_before_any_item(studies, tmp_path):
    from flows.landcover import landcover
    from flows.volumes import segment_volumes

    state = segment_volumes(studies=studies, model="ct-organs-unet", out=str(tmp_path / "v"), device="cpu", return_state=True)
    assert state.is_failed() and "checkpoint file not found (model 'ct-organs-unet')" in state.message
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())
    state = landcover(scenes=[str(tmp_path / "x.tif")], model="landcover-unet", out=str(tmp_path / "l"), device="cpu", return_state=True)
    assert state.is_failed() and "checkpoint file not found (model 'landcover-unet')" in state.message


def test_raster_cli_refuses_a_model_without_weights_once(tmp_path, capsys):
    """`segpipe raster` too: exit 2 before any scene, even with --dask-address (the workers would each fail)."""
    import rasterio
    from affine import Affine

    from pipeline.cli import main

    scenes = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.tif"
        profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 4, "dtype": "uint8", "crs": "EPSG:32633", "transform": Affine(10, 0, 500_000, 0, -10, 6e6)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.zeros((4, 8, 8), np.uint8))
        scenes.append(str(path))
    code = main(["raster", *scenes, "--model", "landcover-unet", "--out", str(tmp_path / "out"), "--device", "cpu", "--dask-address", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("checkpoint file not found") == 1 and "model 'landcover-unet'" in err
    assert not (tmp_path / "out").exists()
