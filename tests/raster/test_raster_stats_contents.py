"""What ``stats.zarr`` of ``segpipe raster`` holds: provenance per entry, the replace rule, one class
table, whole-region areas and overlap, region names, run times. Real GeoTIFFs, regions files and runs."""

from __future__ import annotations

import hashlib
import logging
from importlib.metadata import version

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
import xarray as xr
import yaml
from affine import Affine
from pyproj import CRS, Transformer
from safetensors.torch import save_file

from models.spec import spec_from_dict
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.raster.provenance import Provenance
from pipeline.raster.run import segment_raster
from pipeline.raster.stats import append_stats, area_over_time, compute_stats, to_datetime64

UTM = "EPSG:32633"
X0, Y0, PX, N = 500_000.0, 6_000_000.0, 10.0, 64
CLASSES = [{"id": 0, "name": "water", "color": "#1f78b4"}, {"id": 1, "name": "forest", "color": "#33a02c"}, {"id": 5, "name": "urban", "color": "#e31a1c"}]
BIAS = [0.5, 0.25, 0.0]


def _model() -> torch.nn.Conv2d:
    """Per pixel: logits = band values + BIAS, so the label is the brightest band's class."""
    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.copy_(torch.tensor(BIAS))
    return conv.eval()


def _raw_spec(name="per-pixel", classes=CLASSES) -> dict:
    return {
        "name": name, "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 3, "out_channels": len(classes), "kernel_size": 1},
        "in_channels": 3, "classes": classes, "window": [64, 64], "overlap": 0.25, "normalize": {"kind": "none"},
    }


def _spec_file(folder, name="per-pixel", classes=CLASSES):
    """A spec YAML with a safetensors checkpoint next to it (what `segpipe raster --model` takes)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_model().state_dict(), str(folder / f"{name}.safetensors"))
    raw = dict(_raw_spec(name, classes), checkpoint=f"{name}.safetensors")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _scene(path, *, col0=0, width=N, seed=0):
    """A 3-band uint8 scene on the shared 10 m UTM grid, starting at column ``col0``."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 200, size=(3, N, width), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": width, "height": N, "count": 3, "dtype": "uint8", "crs": UTM, "transform": Affine(PX, 0, X0 + col0 * PX, 0, -PX, Y0)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _regions(path, polygons: dict, *, field="name"):
    gdf = gpd.GeoDataFrame({field: list(polygons)}, geometry=list(polygons.values()), crs=UTM)
    gdf.to_file(path, driver="GPKG")
    return path


def _box(c0, r0, c1, r1):
    """A box in pixel columns/rows of the shared grid (row 0 at the top)."""
    return shapely.box(X0 + c0 * PX, Y0 - r1 * PX, X0 + c1 * PX, Y0 - r0 * PX)


class Exploding(torch.nn.Module):
    """A model that must never run: the checks come before any segmentation work."""

    def forward(self, x):
        raise AssertionError("the model ran")


def _geodesic_area(geom) -> float:
    crs = CRS.from_user_input(UTM)
    tr = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    lonlat = shapely.transform(shapely.segmentize(geom, 1.0), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return abs(crs.get_geod().geometry_area_perimeter(shapely.geometry.polygon.orient(lonlat, 1.0))[0])


# --- A: provenance ---


def test_every_entry_records_source_model_checkpoint_regions_and_version(tmp_path):
    spec_path = _spec_file(tmp_path / "spec")
    a = _scene(tmp_path / "in" / "a.tif")
    b = _scene(tmp_path / "in" / "b.tif", seed=1)
    regions = _regions(tmp_path / "districts.gpkg", {"north": _box(0, 0, 64, 32)})
    out = tmp_path / "out"
    assert main(["raster", str(a), "--model", str(spec_path), "--out", str(out), "--regions", str(regions), "--time", "2024-06-01", "--device", "cpu"]) == 0
    segment_raster(b, spec_path, out, time="2024-06-02", device="cpu")  # whole scene
    sha = hashlib.sha256((tmp_path / "spec" / "per-pixel.safetensors").read_bytes()).hexdigest()
    with xr.open_zarr(out / "stats.zarr") as ds:
        for name in ("source", "model", "checkpoint_sha256", "regions", "segpipe_version"):
            assert ds[name].dims == ("time", "scene"), name
        one = ds.sel(time="2024-06-01", scene="a")
        assert one["source"].values.item() == str(a.resolve())
        assert one["model"].values.item() == "per-pixel"
        assert one["checkpoint_sha256"].values.item() == sha
        assert one["regions"].values.item() == str(regions.resolve())
        assert one["segpipe_version"].values.item() == version("segpipe")
        two = ds.sel(time="2024-06-02", scene="b")
        assert (two["source"].values.item(), two["regions"].values.item(), two["checkpoint_sha256"].values.item()) == (str(b.resolve()), "", sha)
        assert ds["source"].sel(time="2024-06-02", scene="a").values.item() == ""  # no such entry: empty, not NaN
    with rasterio.open(out / "a.labels.tif") as cog:
        assert cog.tags()["SEGPIPE_MODEL"] == "per-pixel"


# --- B: replacing an entry made from another file ---


def test_same_stem_from_another_file_is_refused_before_work_unless_forced(tmp_path, capsys):
    spec_path = _spec_file(tmp_path / "spec")
    first = _scene(tmp_path / "d1" / "tile.tif")
    second = _scene(tmp_path / "d2" / "tile.tif", seed=7)
    out = tmp_path / "out"
    args = ["--model", str(spec_path), "--out", str(out), "--time", "2024-06-01", "--device", "cpu"]
    assert main(["raster", str(first), *args]) == 0
    before = xr.open_zarr(out / "stats.zarr").load()
    labels_before = (out / "tile.labels.tif").read_bytes()
    assert main(["raster", str(second), *args]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{out / 'stats.zarr'}: scene 'tile' at time 2024-06-01T00:00:00 was made from {first.resolve()}, not {second.resolve()}" in err
    assert "use another --out or --time, rename one input, or pass --force to replace it" in err
    assert (out / "tile.labels.tif").read_bytes() == labels_before  # nothing segmented, nothing rewritten
    xr.testing.assert_identical(xr.open_zarr(out / "stats.zarr").load(), before)
    # the library refuses before the model runs, too
    with pytest.raises(InputError, match="was made from"):
        segment_raster(second, spec_path, out, time="2024-06-01", model=Exploding())
    assert not (out / ".work").exists()
    # the same file again replaces its own entry; --force replaces the other file's
    assert main(["raster", str(first), *args]) == 0
    assert main(["raster", str(second), *args, "--force"]) == 0
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert ds.sizes["time"] == 1 and ds["source"].sel(scene="tile").values.item() == str(second.resolve())
        assert not np.array_equal(ds.area_m2.values, before.area_m2.values)


def test_the_rule_holds_under_the_lock_and_spares_old_entries(tmp_path):
    info_ds = _entry(1.0)
    store = tmp_path / "stats.zarr"
    append_stats(info_ds, store, time="2024-06-01", scene="tile")  # an older segpipe: no source recorded
    append_stats(_entry(2.0), store, time="2024-06-01", scene="tile", provenance=Provenance("/d1/tile.tif", "m"))
    with pytest.raises(InputError, match="made from /d1/tile.tif, not /d2/tile.tif"):
        append_stats(_entry(3.0), store, time="2024-06-01", scene="tile", provenance=Provenance("/d2/tile.tif", "m"))
    assert float(xr.open_zarr(store).area_m2.max()) == 2.0
    append_stats(_entry(3.0), store, time="2024-06-01", scene="tile", provenance=Provenance("/d2/tile.tif", "m"), force=True)
    with xr.open_zarr(store) as ds:
        assert float(ds.area_m2.max()) == 3.0 and ds["source"].values.item() == "/d2/tile.tif"


def test_the_flow_task_takes_force(tmp_path):
    from flows.landcover import segment_scene

    spec_path = _spec_file(tmp_path / "spec")
    first = _scene(tmp_path / "d1" / "tile.tif")
    second = _scene(tmp_path / "d2" / "tile.tif", seed=3)
    out = str(tmp_path / "out")
    kw = {"name": "tile", "model": str(spec_path), "out_dir": out, "device": "cpu", "time": "2024-06-01T00:00:00"}
    segment_scene.fn(scene=str(first), **kw)
    with pytest.raises(InputError, match="pass --force to replace it"):
        segment_scene.fn(scene=str(second), **kw)
    segment_scene.fn(scene=str(second), force=True, **kw)
    with xr.open_zarr(tmp_path / "out" / "stats.zarr") as ds:
        assert ds["source"].values.item() == str(second.resolve())


# --- C: one class table per store ---


def _entry(value: float, classes=CLASSES, regions=("scene",)) -> xr.Dataset:
    k = len(classes)
    return xr.Dataset(
        {"area_m2": (("region", "class"), np.full((len(regions), k), value)), "nodata_area_m2": ("region", np.zeros(len(regions)))},
        coords={"region": np.array(regions, dtype=object), "class": np.array([c["name"] for c in classes], dtype=object),
                "class_id": ("class", [c["id"] for c in classes]), "class_color": ("class", np.array([c["color"] for c in classes], dtype=object))},
    )


def test_a_model_contradicting_the_class_table_is_refused_before_work(tmp_path, capsys):
    spec_path = _spec_file(tmp_path / "spec")
    scene = _scene(tmp_path / "a.tif")
    out = tmp_path / "out"
    segment_raster(scene, spec_path, out, time="2024-06-01", device="cpu")
    other = [{"id": 0, "name": "bare", "color": "#aaaaaa"}, {"id": 4, "name": "forest", "color": "#00ff00"}, {"id": 5, "name": "urban", "color": "#ff0000"}]
    other_path = _spec_file(tmp_path / "spec2", name="lc-v2", classes=other)
    before = xr.open_zarr(out / "stats.zarr").load()
    with pytest.raises(InputError) as caught:
        segment_raster(scene, other_path, out, time="2024-06-09", model=Exploding())
    message = str(caught.value)
    assert "'forest' is id 1 in the store, 4 in the model" in message and "id 0 is 'water' in the store, 'bare' in the model" in message
    assert "store: 0=water, 1=forest, 5=urban; model: 0=bare, 4=forest, 5=urban" in message
    assert "another --out folder" in message
    # the command line refuses it before the model loads (exit 2), for the whole run
    (tmp_path / "spec2" / "lc-v2.safetensors").unlink()  # loading it would fail differently
    assert main(["raster", str(scene), "--model", str(other_path), "--out", str(out), "--time", "2024-06-09"]) == 2
    assert "contradict the store's" in capsys.readouterr().err
    xr.testing.assert_identical(xr.open_zarr(out / "stats.zarr").load(), before)


def test_new_classes_come_after_the_stores_and_every_id_keeps_its_name(tmp_path):
    store = tmp_path / "stats.zarr"
    append_stats(_entry(1.0), store, time="2024-06-01", scene="a")
    more = [{"id": 5, "name": "urban", "color": "#e31a1c"}, {"id": 7, "name": "bare", "color": "#aaaaaa"}, {"id": 1, "name": "forest", "color": "#33a02c"}]
    append_stats(_entry(2.0, more), store, time="2024-06-02", scene="a")
    with xr.open_zarr(store) as ds:
        assert list(ds["class"].values) == ["water", "forest", "urban", "bare"]  # store order, then new: not alphabetical
        assert list(ds["class_id"].values) == [0, 1, 5, 7]
        assert float(ds.area_m2.sel(time="2024-06-01", scene="a", region="scene", **{"class": "forest"})) == 1.0
        assert np.isnan(float(ds.area_m2.sel(time="2024-06-01", scene="a", region="scene", **{"class": "bare"})))
        assert float(ds.area_m2.sel(time="2024-06-02", scene="a", region="scene", **{"class": "bare"})) == 2.0
    with pytest.raises(InputError, match="id 7 is 'bare' in the store, 'rock' in the model"):
        append_stats(_entry(3.0, [{"id": 7, "name": "rock", "color": "#000000"}]), store, time="2024-06-03", scene="a")


# --- D: whole-region area, observed fraction, overlap ---


def test_region_total_area_is_the_whole_polygons_and_observed_fraction_follows(tmp_path):
    spec_path = _spec_file(tmp_path / "spec")
    scene = _scene(tmp_path / "a.tif")
    with rasterio.open(scene, "r+") as src:  # the left quarter is nodata
        src.nodata = 0
        data = src.read()
        data[:, :, :16] = 0
        src.write(data)
    half_out = _box(32, 8, 96, 40)  # half of it lies east of the scene
    inside = _box(40, 40, 60, 60)
    regions = _regions(tmp_path / "r.gpkg", {"east": half_out, "inside": inside})
    out = tmp_path / "out"
    segment_raster(scene, spec_path, out, regions=regions, time="2024-06-01", device="cpu")
    with xr.open_zarr(out / "stats.zarr") as ds:
        ds = ds.sel(time="2024-06-01", scene="a").load()
    assert ds.region_total_area_m2.dims == ("region",)
    assert float(ds.region_total_area_m2.sel(region="east")) == pytest.approx(_geodesic_area(half_out), rel=1e-9)
    assert float(ds.region_total_area_m2.sel(region="inside")) == pytest.approx(_geodesic_area(inside), rel=1e-9)
    observed = (ds.region_area_m2 - ds.nodata_area_m2) / ds.region_total_area_m2
    assert float(observed.sel(region="east")) == pytest.approx(0.5, rel=1e-6)
    assert float(observed.sel(region="inside")) == pytest.approx(1.0, rel=1e-6)
    # the whole scene's total is its own area, so observed is its valid fraction
    whole = compute_stats(np.zeros((N, N), np.uint8), np.arange(N * N).reshape(N, N) % 4 != 0, _info(scene), _whole(scene), _classes())
    assert whole.region_total_area_m2.values.tolist() == whole.region_area_m2.values.tolist()
    observed = ((whole.region_area_m2 - whole.nodata_area_m2) / whole.region_total_area_m2).squeeze()
    assert float(observed) == pytest.approx(0.75, rel=1e-9)  # pixel areas vary by ~1e-9 across the scene


def _info(path):
    from pipeline.raster.ingest import probe_raster

    return probe_raster(path)


def _whole(path):
    from pipeline.raster.regions import scene_region

    return scene_region(_info(path))


def _classes():
    from models.spec import ClassInfo

    return [ClassInfo(c["id"], c["name"], c["color"]) for c in CLASSES]


def test_area_over_time_refuses_overlapping_scenes_and_sums_tiles(tmp_path):
    spec = spec_from_dict(_raw_spec())
    model = _model()
    overlap = _box(24, 0, 40, 64)  # inside both overlapping scenes
    spanning = _box(8, 8, 120, 56)  # across two edge-sharing tiles
    regions = _regions(tmp_path / "r.gpkg", {"overlap": overlap, "spanning": spanning})
    out = tmp_path / "out"
    for name, col0 in (("left", 0), ("middle", 16), ("right", 64)):
        _scene(tmp_path / f"{name}.tif", col0=col0, seed=col0)
    for name in ("left", "middle"):  # overlapping on 2024-06-01
        segment_raster(tmp_path / f"{name}.tif", spec, out, regions=regions, time="2024-06-01", model=model)
    for name in ("left", "right"):  # tiling on 2024-06-02
        segment_raster(tmp_path / f"{name}.tif", spec, out, regions=regions, time="2024-06-02", model=model)
    store = out / "stats.zarr"
    with pytest.raises(InputError, match=r"region 'overlap' at 2024-06-01T00:00:00 .*overlap.*pass scene=\.\.\. to take one scene"):
        area_over_time(store, "forest", "overlap")
    one = area_over_time(store, "forest", "overlap", scene="left")
    assert one.sizes["time"] == 2 and np.isfinite(one.values).all()
    # the tiles share an edge: their sum is the region's area exactly, no overlap reported
    with xr.open_zarr(store) as ds:
        tiles = ds.sel(time="2024-06-02", region="spanning").load()
    total = float(tiles.region_total_area_m2.max())
    assert float(tiles.region_area_m2.sum("scene")) == pytest.approx(total, rel=1e-8)  # far below the 1e-6 overlap tolerance
    spanning_ds = xr.open_zarr(store).sel(region="spanning").load()
    with pytest.raises(InputError, match="region 'spanning' at 2024-06-01"):  # the overlapping night still counts twice
        area_over_time(store, "water", "spanning")
    assert float(spanning_ds.region_area_m2.sel(time="2024-06-01").sum("scene")) > total


def test_tiles_that_share_an_edge_sum_without_complaint(tmp_path):
    spec = spec_from_dict(_raw_spec())
    regions = _regions(tmp_path / "r.gpkg", {"spanning": _box(8, 8, 120, 56)})
    out = tmp_path / "out"
    for name, col0 in (("left", 0), ("right", 64)):
        segment_raster(_scene(tmp_path / f"{name}.tif", col0=col0, seed=col0), spec, out, regions=regions, time="2024-06-02", model=_model())
    over = area_over_time(out / "stats.zarr", "forest", "spanning")
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert float(over.values.item()) == pytest.approx(float(ds.area_m2.sel(region="spanning", **{"class": "forest"}).sum()), rel=1e-12)


# --- E: regions named by feature number ---


def test_regions_without_a_name_attribute_warn(tmp_path, caplog):
    spec = spec_from_dict(_raw_spec())
    regions = _regions(tmp_path / "plots.gpkg", {"x": _box(0, 0, 32, 32), "y": _box(32, 32, 64, 64)}, field="code")
    with caplog.at_level(logging.WARNING, logger="pipeline.raster.regions"):
        segment_raster(_scene(tmp_path / "a.tif"), spec, tmp_path / "out", regions=regions, time="2024-06-01", model=_model())
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pipeline.raster.regions"]
    assert warned and str(regions) in warned[0].getMessage() and "--region-field" in warned[0].getMessage()
    assert "attributes: code" in warned[0].getMessage()
    with xr.open_zarr(tmp_path / "out" / "stats.zarr") as ds:
        assert list(ds.region.values) == ["1", "2"]


# --- F: run times ---


def test_default_time_is_whole_seconds_utc_and_says_so(tmp_path):
    spec_path = _spec_file(tmp_path / "spec")
    out = tmp_path / "out"
    assert main(["raster", str(_scene(tmp_path / "a.tif")), "--model", str(spec_path), "--out", str(out), "--device", "cpu"]) == 0
    assert main(["raster", str(_scene(tmp_path / "b.tif")), "--model", str(spec_path), "--out", str(out), "--device", "cpu", "--time", "2024-06-01"]) == 0
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert ds.sizes["time"] == 2
        assert all(int(t.astype("datetime64[ns]").astype(np.int64)) % 10**9 == 0 for t in ds.time.values)
        assert ds.time.attrs == {"long_name": "run time", "timezone": "UTC"}
        ds.load().to_netcdf(tmp_path / "stats.nc", engine="scipy")  # microseconds made this fail
    assert to_datetime64(None) == to_datetime64(None).astype("datetime64[s]")
