"""Regressions found by a first-time operations review of ``segpipe raster`` (tiny real GeoTIFFs)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from models.spec import spec_from_dict
from pipeline.raster.areas import pixel_area_m2
from pipeline.raster.run import segment_raster

CLASSES = [{"id": 0, "name": "water", "color": "#1f78b4"}, {"id": 1, "name": "forest", "color": "#33a02c"}, {"id": 5, "name": "urban", "color": "#e31a1c"}]
IDS = np.array([c["id"] for c in CLASSES])
# per-pixel logits W x + b: integer weights and half-integer biases never tie
WEIGHT = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
BIAS = [0.5, 0.25, 0.0]


def per_pixel_model() -> torch.nn.Conv2d:
    w = torch.tensor(WEIGHT)
    conv = torch.nn.Conv2d(4, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
        conv.bias.copy_(torch.tensor(BIAS))
    return conv.eval()


def spec(window=(64, 64)):
    return spec_from_dict({
        "name": "per-pixel", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 4, "out_channels": 3, "kernel_size": 1}, "in_channels": 4,
        "classes": CLASSES, "window": list(window), "overlap": 0.25, "normalize": {"kind": "none"},
    })


def expected(pixels: np.ndarray) -> np.ndarray:
    logits = np.einsum("kc,cyx->kyx", np.asarray(WEIGHT), pixels.astype(np.float64)) + np.asarray(BIAS)[:, None, None]
    return IDS[np.argmax(logits, axis=0)]


def test_blocks_without_valid_pixels_are_not_segmented(tmp_path, make_geotiff):
    """A mostly-nodata scene costs its valid area: the model never runs on all-nodata blocks, and
    the labels of the valid pixels are exactly the per-pixel answer (nodata elsewhere)."""
    rng = np.random.default_rng(3)
    data = np.zeros((4, 256, 768), dtype=np.uint8)  # 1 x 3 blocks of 256; only the first holds data
    data[:, :, :256] = rng.integers(1, 255, (4, 256, 256), dtype=np.uint8)
    tif = make_geotiff(tmp_path / "swath.tif", data, nodata=0, photometric="MINISBLACK")  # 4 data bands, not RGB + alpha (GDAL's default)
    result = segment_raster(tif, spec(), tmp_path / "out", block=256, device="cpu", model=per_pixel_model(), time="2024-06-01")
    assert result.engine.blocks_run == 1
    assert result.engine.blocks_skipped == 2
    with rasterio.open(result.labels_path) as dst:
        labels = dst.read(1)
    assert (labels[:, :256] == expected(data[:, :, :256])).all()
    assert (labels[:, 256:] == 255).all()
    valid_area = pixel_area_m2(result.info.crs, result.info.transform, slice(0, 256), slice(0, 256)).sum()
    assert result.stats["area_m2"].sel(region="scene").sum().item() == pytest.approx(valid_area, rel=1e-12)


def test_skipping_empty_blocks_changes_no_valid_label(tmp_path, make_geotiff, monkeypatch):
    """With a CNN whose receptive field crosses block edges, the labels of every valid pixel are
    the same whether empty blocks are skipped or segmented."""
    from pipeline.raster import segment

    rng = np.random.default_rng(4)
    data = rng.integers(1, 255, (4, 300, 300), dtype=np.uint8)
    data[:, :, 140:] = 0  # blocks of 64: columns 192.. hold no valid pixel
    data[:, 200:, :] = 0
    tif = make_geotiff(tmp_path / "sparse.tif", data, nodata=0, photometric="MINISBLACK")  # 4 data bands, not RGB + alpha
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 5, padding=2)).eval()
    skipping = segment_raster(tif, spec(window=(48, 48)), tmp_path / "skip", block=64, device="cpu", model=cnn, time="2024-06-01")
    monkeypatch.setattr(segment, "mark_empty_blocks", lambda *a, **k: 0)
    full = segment_raster(tif, spec(window=(48, 48)), tmp_path / "full", block=64, device="cpu", model=cnn, time="2024-06-01")
    assert skipping.engine.blocks_skipped == 13 and full.engine.blocks_skipped == 0  # 5 x 5 blocks, 4 x 3 hold data
    with rasterio.open(skipping.labels_path) as a, rasterio.open(full.labels_path) as b:
        assert (a.read(1) == b.read(1)).all()
    assert (skipping.stats["area_m2"] == full.stats["area_m2"]).all()


# --- the landcover flow and scene catalogs pick bands, as `segpipe raster --bands` does ---


def _spec_file(tmp_path) -> str:
    from safetensors.torch import save_file

    save_file(per_pixel_model().state_dict(), str(tmp_path / "pp.safetensors"))
    raw = {
        "name": "per-pixel", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 4, "out_channels": 3, "kernel_size": 1}, "in_channels": 4,
        "classes": CLASSES, "window": [64, 64], "overlap": 0.25, "normalize": {"kind": "none"}, "checkpoint": "pp.safetensors",
    }
    import yaml

    (tmp_path / "pp.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "pp.yaml")


def test_scene_catalog_bands_reach_the_scene_task(tmp_path, make_geotiff):
    """A 6-band scene and a 4-band model: the catalog's ``bands`` pick 4 of them for every scene."""
    from flows.landcover import plan_scenes, segment_scene

    rng = np.random.default_rng(5)
    data = rng.integers(1, 255, (6, 40, 56), dtype=np.uint8)
    make_geotiff(tmp_path / "six.tif", data)
    model = _spec_file(tmp_path)
    (tmp_path / "cat.yaml").write_text(f"model: {model}\nscenes: [six.tif]\nbands: [6, 4, 2, 1]\noutput: out\n")
    plan = plan_scenes(str(tmp_path / "cat.yaml"), None, None, None, None, None)
    assert plan.bands == (6, 4, 2, 1)
    assert plan_scenes(str(tmp_path / "cat.yaml"), None, None, None, None, None, [1, 2, 3, 4]).bands == (1, 2, 3, 4)
    (name, scene), = plan.todo
    out = segment_scene.fn(name, scene, plan.model, str(plan.out_dir), device="cpu", time="2024-06-01", bands=list(plan.bands))
    with rasterio.open(out.labels) as dst:
        assert (dst.read(1) == expected(data[[5, 3, 1, 0]])).all()


@pytest.mark.parametrize("bands", [[], [0, 1], "1,2", [1.5], [True]])
def test_bad_catalog_bands_are_refused_with_the_catalog_named(tmp_path, bands):
    from flows.catalog import load_scene_catalog
    from pipeline.errors import InputError

    (tmp_path / "cat.yaml").write_text(f"model: demo-landcover\nscenes: [a.tif]\nbands: {bands!r}\n".replace("'", '"'))
    with pytest.raises(InputError, match=r"cat\.yaml: 'bands' must be a list of 1-based band numbers"):
        load_scene_catalog(tmp_path / "cat.yaml")


# --- the command line: whole-run problems once, no debris ---


def _two_scenes(tmp_path, make_geotiff) -> list[str]:
    rng = np.random.default_rng(6)
    # 4 data bands (GDAL's default for 4-band 8-bit GeoTIFFs is RGB + alpha)
    return [str(make_geotiff(tmp_path / f"s{i}.tif", rng.integers(1, 255, (4, 40, 56), dtype=np.uint8), photometric="MINISBLACK")) for i in range(2)]


def test_cli_block_below_the_minimum_is_refused(tmp_path, make_geotiff, capsys):
    from pipeline.cli import main

    scenes = _two_scenes(tmp_path, make_geotiff)
    for block in ("1", "63", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["raster", *scenes, "--model", _spec_file(tmp_path), "--out", str(tmp_path / "out"), "--block", block])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --block: 1 pixels is too small" in err and "use at least 64" in err
    assert "'x' is not a number of pixels" in err
    assert not (tmp_path / "out").exists()


def test_a_block_above_the_maximum_is_refused_and_one_beyond_the_scene_is_clamped(tmp_path, make_geotiff, capsys):
    """``--block 50000`` on a 934 x 723 scene ended in "unexpected MemoryError:" (zarr allocates a whole
    chunk per partial write). Above 8192 is refused; up to it, a block beyond the scene is one block."""
    from pipeline.cli import main
    from pipeline.errors import InputError

    scenes = _two_scenes(tmp_path, make_geotiff)
    with pytest.raises(SystemExit) as exc:
        main(["raster", *scenes, "--model", _spec_file(tmp_path), "--out", str(tmp_path / "out"), "--block", "50000"])
    assert exc.value.code == 2
    assert "argument --block: 50000 pixels is too large" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="block of 9000 pixels is larger than 8192"):
        segment_raster(scenes[0], _spec_file(tmp_path), tmp_path / "lib", block=9000, device="cpu")
    small = segment_raster(scenes[0], _spec_file(tmp_path), tmp_path / "small", block=64, device="cpu")
    big = segment_raster(scenes[0], _spec_file(tmp_path), tmp_path / "big", block=8192, device="cpu")
    assert big.engine.blocks_run == 1
    with rasterio.open(small.labels_path) as a, rasterio.open(big.labels_path) as b:
        assert np.array_equal(a.read(), b.read())


def test_cli_bad_regions_file_is_one_message_and_exit_2(tmp_path, make_geotiff, capsys):
    """--regions is the same for every scene: a missing file or attribute is reported once, before
    the model loads, with exit 2, and no output folder is created."""
    import geopandas as gpd
    import shapely

    from pipeline.cli import main

    scenes = _two_scenes(tmp_path, make_geotiff)
    out = tmp_path / "out"
    args = ["raster", *scenes, "--model", _spec_file(tmp_path), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--regions", str(tmp_path / "nosuch.gpkg")]) == 2
    err = capsys.readouterr().err
    assert err == f"segpipe raster: error: {tmp_path / 'nosuch.gpkg'}: regions file not found (check the --regions path)\n"
    districts = tmp_path / "d.gpkg"
    gpd.GeoDataFrame({"district": ["a"]}, geometry=[shapely.box(500000, 5999700, 500200, 6000000)], crs="EPSG:32633").to_file(districts)
    assert main([*args, "--regions", str(districts), "--region-field", "name"]) == 2
    assert capsys.readouterr().err == f"segpipe raster: error: {districts}: no attribute 'name' (available attributes: district) (pick one with --region-field)\n"
    assert main([*args, "--region-field", "district"]) == 2
    assert "--region-field given without --regions" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--regions", str(districts), "--region-field", "district", "--time", "2024-06-01"]) == 0
    assert (out / "s0.labels.tif").is_file() and (out / "s1.labels.tif").is_file()


def test_cli_run_where_every_scene_fails_leaves_no_output_folder(tmp_path, make_geotiff, capsys):
    from pipeline.cli import main

    three = make_geotiff(tmp_path / "rgb.tif", np.ones((3, 20, 20), dtype=np.uint8))
    out = tmp_path / "new" / "out"
    assert main(["raster", str(three), "--model", _spec_file(tmp_path), "--out", str(out), "--device", "cpu"]) == 1
    assert "rgb.tif: 3 bands, model 'per-pixel' needs 4" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


# --- what a killed run (SIGKILL) was writing is cleaned up by the next run ---


def test_next_run_removes_what_a_killed_run_was_writing(tmp_path, make_geotiff):
    """A killed ingest leaves ``.work/<stem>.zarr.tmp-*`` (gigabytes for a large scene), a killed
    COG write ``.<stem>.labels.tif.<token>.tmp.tif``, a killed stats swap ``stats.zarr.tmp-*``:
    the next run of the scene removes them, and its own outputs are complete."""
    rng = np.random.default_rng(7)
    tif = make_geotiff(tmp_path / "scene.tif", rng.integers(1, 255, (4, 40, 56), dtype=np.uint8), photometric="MINISBLACK")  # 4 data bands
    out = tmp_path / "out"
    stale = [
        out / ".work" / "scene.zarr.tmp-0123abcd",
        out / ".scene.labels.tif.0123abcd.tmp.tif",
        out / ".scene.labels.tif.4567cdef.cog.tif",
        out / "stats.zarr.tmp-89abcdef",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tif":
            path.write_bytes(b"half a tiff")
        else:
            path.mkdir()
            (path / "zarr.json").write_text("{}")
    other = out / ".work" / "other.zarr.tmp-0123abcd"  # another scene's: not this run's to remove
    other.mkdir()
    segment_raster(tif, spec(), out, block=64, device="cpu", model=per_pixel_model(), time="2024-06-01")
    assert not [p for p in stale if p.exists()]
    assert other.is_dir()
    assert sorted(p.name for p in out.iterdir()) == [".work", "scene.labels.tif", "scene.labels.tif.aux.xml", "scene.quicklook.png", "stats.zarr"]


def test_stats_store_killed_between_its_two_renames_is_restored(tmp_path):
    """Killed after ``stats.zarr`` became ``stats.zarr.old-*`` and before the new one took its
    place: the next append puts the old store back instead of starting a new, empty history."""
    import xarray as xr

    from pipeline.raster.stats import append_stats

    ds = xr.Dataset({"area_m2": (("region", "class"), np.ones((1, 1)))}, coords={"region": ["r"], "class": ["c"], "class_id": ("class", [0]), "class_color": ("class", ["#000000"])})
    store = tmp_path / "stats.zarr"
    append_stats(ds, store, time="2024-06-01", scene="a")
    store.rename(tmp_path / "stats.zarr.old-0123abcd")
    append_stats(ds * 2, store, time="2024-06-02", scene="a")
    got = xr.open_zarr(store)
    assert [str(t)[:10] for t in got.time.values] == ["2024-06-01", "2024-06-02"]
    assert got["area_m2"].sel(scene="a", region="r", **{"class": "c"}).values.tolist() == [1.0, 2.0]
    assert not list(tmp_path.glob("stats.zarr.*"))


def test_truncated_file_error_gives_gdal_reason(tmp_path, make_geotiff):
    """The message carries GDAL's reason (libtiff's short read), not rasterio's "See previous exception"."""
    from pipeline.errors import InputError
    from pipeline.raster.ingest import ingest_raster

    rng = np.random.default_rng(8)
    full = make_geotiff(tmp_path / "full.tif", rng.integers(0, 255, (4, 300, 300), dtype=np.uint8), tiled=True, blockxsize=256, blockysize=256)
    cut = tmp_path / "cut.tif"
    raw = full.read_bytes()
    cut.write_bytes(raw[: len(raw) * 3 // 4])
    with pytest.raises(InputError, match=r"cut\.tif: read failed at rows .*truncated or corrupt") as exc:
        ingest_raster(cut, tmp_path / "s.zarr", block=256)
    assert "see previous exception" not in str(exc.value).lower()
    assert "TIFF" in str(exc.value) or "Cannot read" in str(exc.value)  # libtiff's or GDAL's own short-read reason


@pytest.mark.parametrize(("text", "utc"), [("2024-06-01T02:00+02:00", "2024-06-01T00:00"), ("2024-06-01T02:00Z", "2024-06-01T02:00"), ("2024-06-01", "2024-06-01T00:00")])
def test_time_with_an_offset_is_utc_without_a_numpy_warning(text, utc, recwarn):
    from pipeline.raster.stats import to_datetime64

    assert to_datetime64(text) == np.datetime64(utc, "ns")
    assert not [w for w in recwarn if "timezone" in str(w.message)]


def test_png_named_tif_is_called_what_it_is(tmp_path):
    from pipeline.errors import InputError
    from pipeline.raster.ingest import probe_raster

    fake = tmp_path / "scene.tif"
    with rasterio.open(fake, "w", driver="PNG", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(InputError, match=r"scene\.tif: a PNG image with a GeoTIFF name and no CRS \(not a GeoTIFF\) \(give the real GeoTIFF/COG"):
        probe_raster(fake)
