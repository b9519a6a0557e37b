"""pipeline.raster.run and ``segpipe raster``: end to end on real scenes with a per-pixel model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
import yaml
from safetensors.torch import save_file

from models.spec import spec_from_dict
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.raster import stats as stats_module
from pipeline.raster.run import segment_raster

CLASSES = [{"id": 0, "name": "water", "color": "#1f78b4"}, {"id": 1, "name": "forest", "color": "#33a02c"}, {"id": 5, "name": "urban", "color": "#e31a1c"}]


def per_pixel_model(weight, bias) -> torch.nn.Conv2d:
    """Conv2d kernel 1 with known weights: logits = W x + b at every pixel."""
    w = torch.tensor(weight, dtype=torch.float32)
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
        conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv.eval()


def spec_for(in_channels: int, *, window=(256, 256), normalize=None, tmp_path=None, model=None):
    raw = {
        "name": "per-pixel", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": in_channels, "out_channels": 3, "kernel_size": 1},
        "in_channels": in_channels, "classes": CLASSES, "window": list(window), "overlap": 0.25,
        "normalize": normalize or {"kind": "none"},
    }
    if tmp_path is None:
        return spec_from_dict(raw)
    save_file(model.state_dict(), str(tmp_path / "pp.safetensors"))
    raw["checkpoint"] = "pp.safetensors"
    path = tmp_path / "pp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# integer weights and half-integer biases: logits are exact in float32 and never tie
LANDSAT_W = ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [0.5, 0.25, 0.0])


def expected_labels(pixels: np.ndarray, weight, bias, scale: float = 1.0) -> np.ndarray:
    logits = np.einsum("kc,cyx->kyx", np.asarray(weight), pixels.astype(np.float64) * scale) + np.asarray(bias)[:, None, None]
    return np.array([c["id"] for c in CLASSES])[np.argmax(logits, axis=0)]


def test_landsat_per_pixel_labels_nodata_grid_and_stats(landsat, bahamas, tmp_path):
    spec = spec_for(3)
    out = tmp_path / "out"
    seen = []
    result = segment_raster(
        landsat, spec, out, regions=bahamas, block=512, device="cpu", time="2024-06-01T02:00",
        model=per_pixel_model(*LANDSAT_W), progress=lambda stage, done, total: seen.append(stage),
    )
    assert {"ingest", "segment", "stats"} <= set(seen)
    with rasterio.open(landsat) as src, rasterio.open(result.labels_path) as lab:
        pixels = src.read()
        valid = src.dataset_mask() > 0
        assert (lab.crs, lab.transform, lab.width, lab.height) == (src.crs, src.transform, src.width, src.height)
        labels = lab.read(1)
        assert lab.nodata == 255
    expected = expected_labels(pixels, *LANDSAT_W)
    np.testing.assert_array_equal(labels[valid], expected[valid])
    assert (labels[~valid] == 255).all()
    assert len(np.unique(labels[valid])) == 3  # all classes occur: the check is not vacuous
    assert result.labels_path == out / "landsat7_bahamas_rgb.labels.tif"
    assert result.quicklook_path.read_bytes()[:4] == b"\x89PNG"
    ds = xr.open_zarr(out / "stats.zarr")
    assert ds.area_m2.dims == ("time", "scene", "region", "class")
    assert list(ds.region.values) == ["The Bahamas"] and list(ds.scene.values) == ["landsat7_bahamas_rgb"]
    assert not (out / ".work").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "landsat7_bahamas_rgb.labels.tif", "landsat7_bahamas_rgb.labels.tif.aux.xml", "landsat7_bahamas_rgb.quicklook.png", "stats.zarr",
    ]


@pytest.mark.slow
def test_naip_four_bands_with_scaling_and_same_time_rerun(naip, tmp_path):
    weight = [[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]
    bias = [0.5 / 256, 0.25 / 256, 0.0]
    spec = spec_for(4, normalize={"kind": "scale", "factor": 1 / 256})
    model = per_pixel_model(weight, bias)
    for _ in range(2):  # same time twice: the entry is replaced, not duplicated
        result = segment_raster(naip, spec, tmp_path, block=512, device="cpu", time="2024-06-01", model=model)
    with rasterio.open(naip) as src, rasterio.open(result.labels_path) as lab:
        pixels = src.read()
        labels = lab.read(1)
        assert (lab.crs, lab.transform, lab.shape) == (src.crs, src.transform, src.shape)
    np.testing.assert_array_equal(labels, expected_labels(pixels, weight, bias, scale=1 / 256))
    assert len(np.unique(labels)) == 3
    ds = xr.open_zarr(tmp_path / "stats.zarr")
    assert ds.sizes["time"] == 1 and ds.sizes["scene"] == 1 and list(ds.region.values) == ["scene"]
    # the scene's area is 723 x 934 pixels of 5 m x 5 m, corrected for the UTM scale factor (~0.9996^-2)
    total = float(ds.area_m2.sum())
    assert total == pytest.approx(723 * 934 * 25.0, rel=2e-3)
    assert float(ds.pixel_count.sum()) == 723 * 934


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_blocks(naip, tmp_path, monkeypatch):
    spec = spec_for(4, window=(128, 128))
    model = per_pixel_model([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], [0.5, 0.25, 0.0])

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr("pipeline.raster.publish.compute_stats", crash)
    with pytest.raises(RuntimeError):
        segment_raster(naip, spec, tmp_path, block=256, device="cpu", model=model)
    work = tmp_path / ".work" / "naip_north_dakota_rgbn.zarr"
    assert work.is_dir()
    assert not (tmp_path / "stats.zarr").exists()
    monkeypatch.setattr("pipeline.raster.publish.compute_stats", stats_module.compute_stats)
    result = segment_raster(naip, spec, tmp_path, block=256, device="cpu", model=model)
    assert result.engine.windows_run == 0 and result.engine.blocks_skipped == result.engine.blocks_total
    assert not work.exists()


# --- bad inputs: a clear error and no output left ---


def _no_outputs(out):
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))


@pytest.fixture
def conv3():
    return per_pixel_model(*LANDSAT_W)


def test_not_a_raster(tmp_path, conv3):
    bad = tmp_path / "scene.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match=r"scene\.tif: not a readable raster"):
        segment_raster(bad, spec_for(3), tmp_path / "out", model=conv3)
    _no_outputs(tmp_path / "out")


def test_truncated_raster(naip, tmp_path):
    cut = tmp_path / "cut.tif"
    cut.write_bytes(naip.read_bytes()[:150_000])
    with pytest.raises(InputError, match=r"cut\.tif: read failed.*truncated"):
        segment_raster(cut, spec_for(4), tmp_path / "out", block=256, model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    _no_outputs(tmp_path / "out")


def test_wrong_band_count(naip, tmp_path, conv3):
    with pytest.raises(InputError, match=r"naip_north_dakota_rgbn\.tif: 4 bands, model 'per-pixel' needs 3 \(pick bands with --bands 1,2,3\)"):
        segment_raster(naip, spec_for(3), tmp_path / "out", model=conv3)
    _no_outputs(tmp_path / "out")


def test_raster_without_crs(tmp_path, make_geotiff, conv3):
    from affine import Affine

    tif = make_geotiff(tmp_path / "nocrs.tif", np.ones((3, 16, 16), np.uint8), crs=None, transform=Affine.identity())
    with pytest.raises(InputError, match=r"nocrs\.tif: no CRS"):
        segment_raster(tif, spec_for(3), tmp_path / "out", model=conv3)
    _no_outputs(tmp_path / "out")


def test_scene_outside_every_region_gets_labels_without_statistics(naip, landsat, bahamas, tmp_path, caplog):
    """A nightly catalog's tile outside its districts still gets its label map; the store gets no entry for it."""
    out = tmp_path / "out"
    model = per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0])
    with caplog.at_level("WARNING", logger="pipeline.raster.run"):
        result = segment_raster(naip, spec_for(4), out, regions=bahamas, model=model)
    assert "none of its 1 region(s) intersects the raster" in caplog.text and "segmented without statistics" in caplog.text
    with rasterio.open(result.labels_path) as src, rasterio.open(naip) as ref:
        assert (src.crs, src.transform, src.shape) == (ref.crs, ref.transform, ref.shape)
        np.testing.assert_array_equal(src.read(1)[ref.read_masks(1) > 0], expected_labels(ref.read(), np.eye(3, 4), [0, 0, 0])[ref.read_masks(1) > 0])
    assert result.quicklook_path.is_file() and len(result.stats.data_vars) == 0 and not result.stats_path.exists()
    # a scene that meets the regions adds its entry; the one outside stays out
    segment_raster(landsat, spec_for(3), out, regions=bahamas, model=per_pixel_model(*LANDSAT_W))
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert list(ds.scene.values) == ["landsat7_bahamas_rgb"]


def test_regions_without_the_attribute(landsat, bahamas, tmp_path, conv3):
    with pytest.raises(InputError, match=r"no attribute 'district' \(available attributes: id, name\)"):
        segment_raster(landsat, spec_for(3), tmp_path / "out", regions=bahamas, region_field="district", model=conv3)
    _no_outputs(tmp_path / "out")


# --- the command line ---


@pytest.mark.slow
def test_cli_one_bad_scene_is_reported_and_the_others_finish(landsat, tmp_path, capsys):
    spec_path = spec_for(3, tmp_path=tmp_path, model=per_pixel_model(*LANDSAT_W))
    bad = tmp_path / "broken.tif"
    bad.write_text("not an image")
    out = tmp_path / "out"
    code = main(["raster", str(bad), str(landsat), "--model", str(spec_path), "--out", str(out), "--block", "512", "--device", "cpu", "--time", "2024-06-01"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.tif: not a readable raster" in captured.err
    assert "1/2 scene(s) done" in captured.out
    assert (out / "landsat7_bahamas_rgb.labels.tif").is_file()
    assert not list(out.glob("broken*"))
    assert list(xr.open_zarr(out / "stats.zarr").scene.values) == ["landsat7_bahamas_rgb"]


@pytest.mark.slow
def test_cli_bands_option_and_bad_options(naip, tmp_path, capsys):
    spec_path = spec_for(3, tmp_path=tmp_path, model=per_pixel_model(*LANDSAT_W))
    out = tmp_path / "out"
    assert main(["raster", str(naip), "--model", str(spec_path), "--out", str(out), "--bands", "4,1,2", "--device", "cpu"]) == 0
    assert (out / "naip_north_dakota_rgbn.labels.tif").is_file()
    assert main(["raster", str(naip), "--model", str(spec_path), "--out", str(out)]) == 1
    assert "4 bands, model 'per-pixel' needs 3 (pick bands with --bands 1,2,3)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["raster", str(naip), "--model", str(spec_path), "--out", str(out), "--bands", "0,x"])
    with pytest.raises(SystemExit):
        main(["raster", str(naip), "--model", str(spec_path), "--out", str(out), "--device", "tpu"])


@pytest.mark.slow
def test_dask_client_gives_the_local_labels(naip, tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = spec_for(4, window=(128, 128))
    model = per_pixel_model([[1, 0, 0, -1], [0, 0, 0, 1], [0, 1, 0, 0]], [0.5, 0.25, 0.0])
    local = segment_raster(naip, spec, tmp_path / "local", block=256, device="cpu", model=model)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            remote = segment_raster(naip, spec, tmp_path / "dask", block=256, device="cpu", model=model, dask_client=client)
    with rasterio.open(local.labels_path) as a, rasterio.open(remote.labels_path) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert remote.engine.windows_run == remote.engine.windows_total


def test_default_block_is_larger_on_a_gpu(monkeypatch):
    import torch

    from pipeline.raster.run import default_block

    assert default_block("cpu") == 1024
    assert default_block("auto") == 1024  # no GPU here
    assert default_block("cuda") == 1024  # asked for but not there: the engine says so later
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_block("auto") == 2048
    assert default_block("cuda:1") == 2048
    assert default_block("auto", distributed=True) == 1024  # the workers' devices are unknown here


# --- checks made before any work ---


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _volume_stats_store(out):
    """A real statistics store as ``segpipe volume`` writes it: dims study and label."""
    ds = xr.Dataset({"volume_ml": (("study", "label"), np.ones((1, 2)))}, coords={"study": ["ct"], "label": ["background", "liver"]})
    ds.to_zarr(out / "stats.zarr", mode="w")


def test_missing_device_fails_before_any_work(naip, tmp_path, monkeypatch):
    from pipeline.errors import EngineError

    _no_cuda(monkeypatch)
    with pytest.raises(EngineError, match=r"device 'cuda' requested but CUDA is not available \(use --device cpu or auto\)"):
        segment_raster(naip, spec_for(4), tmp_path / "out", device="cuda", model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    assert not (tmp_path / "out").exists()


def test_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    from pipeline.errors import EngineError
    from pipeline.windows import auto_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert auto_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(EngineError, match=r"device 'cuda:2' requested but this machine has 2 CUDA device\(s\) \(use --device cuda:0 to cuda:1, or auto\)"):
        auto_device("cuda:2")


def test_output_folder_that_is_a_file(naip, tmp_path, conv3):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match=r"afile: is a file, not a folder"):
        segment_raster(naip, spec_for(4), afile, model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    with pytest.raises(InputError, match=r"afile/sub: .*afile is a file, so the folder cannot be created"):
        segment_raster(naip, spec_for(4), afile / "sub", model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    assert afile.read_text() == "x"


def test_volume_statistics_in_the_output_folder_fail_at_once_and_write_nothing(naip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _volume_stats_store(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(InputError, match=r"stats\.zarr: holds volume statistics \(from segpipe volume\); segpipe raster cannot add its rows there"):
        segment_raster(naip, spec_for(4), out, model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no labels.tif, .aux.xml, quicklook or .work


def test_cli_whole_run_problems_are_one_message_and_exit_2(naip, tmp_path, capsys, monkeypatch):
    spec_path = spec_for(4, tmp_path=tmp_path, model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    args = [str(naip), "--model", str(spec_path)]
    _no_cuda(monkeypatch)
    assert main(["raster", *args, "--out", str(tmp_path / "o1"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "segpipe raster: error: device 'cuda' requested but CUDA is not available (use --device cpu or auto)\n"
    assert not (tmp_path / "o1").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["raster", *args, "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"segpipe raster: error: {afile}: is a file, not a folder (give --out a folder; it is created when missing)\n"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _volume_stats_store(mixed)
    assert main(["raster", *args, "--out", str(mixed)]) == 2
    assert capsys.readouterr().err.startswith(f"segpipe raster: error: {mixed / 'stats.zarr'}: holds volume statistics")
    assert not list(mixed.glob("naip*"))


def test_cli_missing_inputs_are_reported_before_the_model_loads(tmp_path, capsys):
    spec = yaml.safe_load(spec_for(4, tmp_path=tmp_path, model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0])).read_text())
    spec["checkpoint"] = "absent.safetensors"  # loading the model would fail (exit 2)
    spec_path = tmp_path / "absent.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    missing = tmp_path / "nosuch.tif"
    assert main(["raster", str(missing), "--model", str(spec_path), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: file not found (check the path)" in captured.err
    assert "0/1 scene(s) done" in captured.out


@pytest.mark.slow
def test_cli_batch_with_a_missing_input_and_a_repeated_name_finishes_the_good_one(naip, tmp_path, capsys):
    spec_path = spec_for(4, tmp_path=tmp_path, model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0]))
    other = tmp_path / "b"
    other.mkdir()
    (other / naip.name).write_bytes(naip.read_bytes())
    missing = tmp_path / "nosuch.tif"
    out = tmp_path / "out"
    code = main(["raster", str(missing), str(naip), str(other / naip.name), "--model", str(spec_path), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{missing}: file not found" in captured.err
    assert f"{other / naip.name}: has the same name 'naip_north_dakota_rgbn' as {naip}" in captured.err
    assert "1/3 scene(s) done" in captured.out
    assert f"2 scene(s) failed: {missing}, {other / naip.name}" in captured.err
    assert list(xr.open_zarr(out / "stats.zarr").scene.values) == ["naip_north_dakota_rgbn"]
    with rasterio.open(out / "naip_north_dakota_rgbn.labels.tif") as src, rasterio.open(naip) as img:
        assert src.shape == img.shape


def test_four_band_scene_runs_without_warnings(naip, tmp_path, make_geotiff, caplog):
    # NAIP-like RGBN with band 4 tagged alpha and a nodata value, big enough for two overview levels
    with rasterio.open(naip) as src:
        data = np.tile(src.read(), (1, 2, 2))
        crs, transform = src.crs, src.transform
    tif = make_geotiff(tmp_path / "rgbn.tif", data, crs=crs, transform=transform, nodata=0, photometric="RGB", alpha="UNSPECIFIED")
    with rasterio.open(tif, "r+") as dst:
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green, rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    with caplog.at_level("WARNING", logger="rasterio"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment_raster(
            tif, spec_for(4), tmp_path / "out", block=512, device="cpu", bands=(1, 2, 3, 4), model=per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0])
        )  # band 4 is tagged alpha: data only when --bands names it
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("rasterio")] == []  # GDAL's CPL warnings come through rasterio's loggers


def test_full_disk_mid_run_names_the_output_folder_and_the_fix(naip, tmp_path, monkeypatch):
    """ENOSPC (a full disk: only mocked here, where no small file system can be mounted) while the
    COG is written: an InputError about --out, not an 'unexpected' error about the scene; an error
    about a file outside --out (the input) is left as it is."""
    import errno

    from pipeline.raster import publish

    out = tmp_path / "out"

    def full_disk(labels, mask, info, classes, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(publish, "write_label_cog", full_disk)
    model = per_pixel_model(np.eye(3, 4).tolist(), [0, 0, 0])
    with pytest.raises(InputError, match=r"out: no space left on device writing the outputs of naip_north_dakota_rgbn \(free space or choose another --out\)"):
        segment_raster(naip, spec_for(4), out, block=256, model=model)

    def unreadable_input(labels, mask, info, classes, path, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", str(naip))

    monkeypatch.setattr(publish, "write_label_cog", unreadable_input)
    with pytest.raises(PermissionError):
        segment_raster(naip, spec_for(4), out, block=256, model=model)


def test_a_users_own_label_raster_under_the_output_name_is_not_replaced(make_geotiff, tmp_path):
    """``out/<stem>.labels.tif`` made by another tool (a reference classification) was overwritten
    without a word; segpipe's own label COGs carry the ``SEGPIPE_CLASSES`` tag."""
    pixels = np.random.default_rng(3).integers(0, 200, (3, 96, 80), dtype=np.uint8)
    scene = make_geotiff(tmp_path / "scene.tif", pixels)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "scene.labels.tif"
    with rasterio.open(scene) as src:
        profile = {**src.profile, "count": 1}
    with rasterio.open(theirs, "w", **profile) as dst:
        dst.write(np.ones((1, 96, 80), np.uint8))
    before = theirs.read_bytes()
    model = per_pixel_model(*LANDSAT_W)
    with pytest.raises(InputError, match="exists and was not written by segpipe"):
        segment_raster(scene, spec_for(3), out, device="cpu", model=model, time="2024-06-01")
    assert theirs.read_bytes() == before and not (out / "stats.zarr").exists() and not (out / "scene.quicklook.png").exists()
    result = segment_raster(scene, spec_for(3), out, device="cpu", model=model, time="2024-06-01", force=True)  # force replaces it
    with rasterio.open(result.labels_path) as lab:
        np.testing.assert_array_equal(lab.read(1), expected_labels(pixels, *LANDSAT_W))
    # ours now: a later night writes it again without --force
    assert not segment_raster(scene, spec_for(3), out, device="cpu", model=model, time="2024-06-02").skipped
