"""``segpipe demo`` end to end: the CLI runs the real pipelines on the synthetic data and scores well.

One demo run (about 10 s on 2 CPU cores, so not marked slow) is shared by the tests of this module and
tests/test_docs.py: the session fixture ``demo_run`` in tests/conftest.py.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import xarray as xr

import pipeline.demo.command as command
from pipeline.cli import build_parser, main

MIN_MIOU = 0.7
MIN_DICE = 0.7


def test_cli_exits_zero_and_writes_the_layout(demo_run):
    code, out, result = demo_run
    assert code == 0
    assert result.out_dir == out
    for rel in (
        "landcover/demo-scene.tif", "landcover/demo-scene.truth.tif", "landcover/districts.geojson",
        "landcover/demo-scene.labels.tif", "landcover/demo-scene.quicklook.png", "landcover/stats.zarr",
        "ct/demo-ct.nii.gz", "ct/demo-ct.truth.nii.gz", "ct/demo-ct.labels.nii.gz", "ct/demo-ct.stats.json", "ct/stats.zarr",
    ):
        assert (out / rel).exists(), rel


def test_landcover_scores_and_geometry(demo_run):
    _, out, result = demo_run
    lc = result.landcover
    assert len(lc.iou) == 5 and all(np.isfinite(lc.iou))
    assert lc.miou >= MIN_MIOU, lc.iou
    with rasterio.open(lc.scene) as src, rasterio.open(lc.labels) as dst:
        assert dst.crs == src.crs and dst.crs.to_epsg() == 32633
        assert dst.transform == src.transform and (dst.height, dst.width) == (src.height, src.width)
        assert dst.count == 1 and dst.dtypes == ("uint8",)
        assert set(np.unique(dst.read(1)).tolist()) <= {0, 1, 2, 3, 4}
    ds = xr.open_zarr(lc.stats_store)
    assert {"region", "class"} <= set(ds["area_m2"].dims)
    assert {"Northfield", "Riverside", "Old Town"} <= set(ds["region"].values.tolist())
    # areas printed per district are the ones in the store (last run), in hectares
    north = ds["area_m2"].sel(region="Northfield", **{"class": "fields"}).isel(time=-1).squeeze()
    assert float(north) / 1e4 == pytest.approx(lc.area_ha["Northfield"]["fields"], rel=1e-6)


def test_ct_scores_and_geometry(demo_run):
    _, out, result = demo_run
    ct = result.ct
    assert len(ct.dice) == 7
    assert min(ct.dice[2:]) >= MIN_DICE, dict(zip(ct.label_names, ct.dice))
    source, labels = nib.load(str(ct.volume)), nib.load(str(ct.labels))
    assert nib.aff2axcodes(source.affine) == ("L", "P", "S")
    assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
    ds = xr.open_zarr(ct.stats_store)
    for name in ("volume_ml", "voxel_count", "intensity_mean", "intensity_std"):
        assert set(ds[name].dims) == {"study", "label"}
    liver_ml = float(ds["volume_ml"].sel(study="demo-ct", label="liver"))
    assert liver_ml == pytest.approx(ct.volume_ml["liver"], rel=1e-6)
    assert liver_ml == pytest.approx(ct.truth_ml["liver"], rel=0.3)


def test_printed_report_names_scores_and_paths(demo_run, capsys):
    # the session fixture ran before capsys of this test; print again from the captured result
    from rich.console import Console

    _, out, result = demo_run
    console = Console(width=200, record=True)
    command.print_result(console, result)
    text = console.export_text()
    assert f"{result.landcover.miou:.3f}" in text and f"{result.ct.organ_dice:.3f}" in text
    assert "xr.open_zarr" in text and str(result.landcover.stats_store) in text and str(result.ct.stats_store) in text


def test_help_documents_the_output_layout(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--out DIR" in text and "landcover/demo-scene.labels.tif" in text and "ct/demo-ct.labels.nii.gz" in text


def test_device_not_here_is_one_message_before_any_work(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        assert main(["demo", "--out", str(tmp_path / "d"), "--device", device]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"segpipe demo: error: device '{device}' requested but CUDA is not available (use --device cpu or auto)\n"
    assert not (tmp_path / "d").exists()


def test_device_option_takes_cuda_n_like_segpipe_raster(capsys):
    parser = build_parser()
    assert parser.parse_args(["demo", "--device", "cuda:3"]).device == "cuda:3"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--device", "tpu"])
    assert "use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_output_that_is_a_file_is_one_message(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"segpipe demo: error: {afile}: is a file, not a folder (give --out a folder; it is created when missing)\n"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ct").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "ct: is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct"]  # nothing generated


def test_statistics_of_the_other_kind_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "landcover").mkdir(parents=True)
    volume_stats = xr.Dataset({"volume_ml": (("study", "label"), np.ones((1, 1)))}, coords={"study": ["s"], "label": ["liver"]})
    volume_stats.to_zarr(out / "landcover" / "stats.zarr", mode="w")
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 2
    assert "landcover/stats.zarr: holds volume statistics" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "landcover").iterdir()) == ["stats.zarr"]
