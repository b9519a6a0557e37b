"""Regions files with several layers: the layer is named (``--region-layer``), never guessed; it is
part of the entry's provenance, so another layer redoes the scene. Real GeoPackages, real runs."""

from __future__ import annotations

import hashlib
import json

import geopandas as gpd
import pytest
import shapely
import xarray as xr

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.raster.provenance import inputs_sha256, provenance_of, regions_of, source_of
from pipeline.raster.regions import check_regions_file, choose_layer, read_regions
from pipeline.raster.run import segment_raster
from tests.raster.test_raster_regions import _info
from tests.raster.test_raster_stats_contents import UTM, _box, _scene, _spec_file

TIME = "2024-06-01T01:00:00"


def _two_layers(path, *, first="country", first_geoms=None):
    """A GeoPackage with layer ``first`` (one big polygon, or ``first_geoms``) then ``districts`` (d1, d2)."""
    big = first_geoms or [_box(0, 0, 32, 32)]
    gpd.GeoDataFrame({"name": [f"{first}{i}" for i in range(len(big))]}, geometry=big, crs=UTM).to_file(path, layer=first, driver="GPKG")
    gpd.GeoDataFrame({"name": ["d1", "d2"]}, geometry=[_box(0, 0, 8, 16), _box(8, 0, 16, 16)], crs=UTM).to_file(path, layer="districts", driver="GPKG")
    return path


def test_several_layers_and_none_named_is_refused_listing_the_layers(tmp_path):
    path = _two_layers(tmp_path / "two.gpkg")
    info = _info(crs=UTM)
    expected = f"{path}: 2 layers (country, districts) and none named to take the regions from (pick the layer with --region-layer NAME)"
    for call in (lambda: check_regions_file(path), lambda: read_regions(path, info)):
        with pytest.raises(InputError) as caught:
            call()
        assert str(caught.value) == expected
    with pytest.raises(InputError) as caught:
        read_regions(path, info, layer="district")
    assert str(caught.value) == f"{path}: no layer 'district' (layers: country, districts) (pick the layer with --region-layer NAME)"


def test_the_named_layer_is_read(tmp_path):
    path = _two_layers(tmp_path / "two.gpkg")
    info = _info(crs=UTM)
    assert check_regions_file(path, layer="districts") == 2
    districts = read_regions(path, info, layer="districts")
    assert districts.names == ("d1", "d2") and districts.layer == "districts"
    assert read_regions(path, info, layer="country").names == ("country0",)


def test_a_first_layer_of_points_no_longer_decides(tmp_path):
    # the reviewer's file: layer a_points (Point) before b_districts; the error was "found Point"
    path = _two_layers(tmp_path / "multi.gpkg", first="a_points", first_geoms=[shapely.Point(500_010, 5_999_990)])
    with pytest.raises(InputError, match=r"2 layers \(a_points, districts\) and none named"):
        check_regions_file(path)
    with pytest.raises(InputError, match=r"multi\.gpkg \(layer 'a_points'\): regions must be polygons, found Point"):
        check_regions_file(path, layer="a_points")
    assert check_regions_file(path, layer="districts") == 2


def test_one_layer_files_need_no_name_and_accept_theirs(tmp_path):
    path = tmp_path / "one.geojson"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[_box(0, 0, 8, 8)], crs=UTM).to_file(path, driver="GeoJSON")
    assert choose_layer(path, None) is None
    assert choose_layer(path, "one") == "one"  # GDAL names a GeoJSON's layer after the file
    with pytest.raises(InputError, match=r"no layer 'x' \(layers: one\)"):
        choose_layer(path, "x")


def test_gdal_layer_syntax_in_the_path_says_how_to_name_the_layer(tmp_path):
    path = _two_layers(tmp_path / "two.gpkg")
    with pytest.raises(InputError) as caught:
        check_regions_file(f"{path}|layername=districts")
    assert str(caught.value) == (
        f"{path}|layername=districts: regions file not found (give the file and its layer apart: --regions {path} --region-layer districts)"
    )


def test_the_layer_is_recorded_and_hashed_and_old_digests_stay_valid(tmp_path):
    image = _scene(tmp_path / "tile.tif")
    path = _two_layers(tmp_path / "two.gpkg")
    assert regions_of(path) == source_of(path) == str(path.resolve())
    assert regions_of(path, "districts") == f"{path.resolve()}|layername=districts"
    # without a layer the digest is the one segpipe recorded before layers could be named
    from pipeline.volume.made_with import input_fingerprint

    before = {"input": input_fingerprint(image), "regions": input_fingerprint(path), "region_field": "", "bands": None}
    assert inputs_sha256(image, path, region_field=None, bands=None) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    digests = {inputs_sha256(image, path, region_field=None, bands=None, region_layer=layer) for layer in (None, "districts", "country")}
    assert len(digests) == 3
    spec = _spec_file(tmp_path / "model")
    from models.spec import load_spec

    assert provenance_of(image, load_spec(spec), path, region_layer="districts").regions.endswith("two.gpkg|layername=districts")


def test_cli_refuses_before_any_scene_and_runs_the_named_layer(tmp_path, capsys):
    spec = _spec_file(tmp_path / "model")
    image = _scene(tmp_path / "tile.tif")
    regions = _two_layers(tmp_path / "two.gpkg")
    out = tmp_path / "out"
    base = ["raster", str(image), "--model", str(spec), "--out", str(out), "--time", TIME, "--device", "cpu", "--regions", str(regions)]
    assert main(base) == 2
    assert "2 layers (country, districts) and none named to take the regions from (pick the layer with --region-layer NAME)" in capsys.readouterr().err
    assert not out.exists()  # refused before any scene
    assert main(["raster", str(image), "--model", str(spec), "--out", str(out), "--region-layer", "districts"]) == 2
    assert "--region-layer given without --regions" in capsys.readouterr().err

    assert main([*base, "--region-layer", "districts"]) == 0
    with xr.open_zarr(out / "stats.zarr") as ds:
        assert list(ds.region.values) == ["d1", "d2"]
        assert str(ds["regions"].values.item()) == f"{regions.resolve()}|layername=districts"
        d1 = ds.sel(region="d1").isel(time=0, scene=0)
        assert float(d1.pixel_count.sum() + d1.nodata_pixel_count) == pytest.approx(8 * 16, rel=1e-9)  # its 8 x 16 pixels


def test_another_layer_redoes_the_scene(tmp_path):
    spec = _spec_file(tmp_path / "model")
    image = _scene(tmp_path / "tile.tif")
    regions = _two_layers(tmp_path / "two.gpkg")
    out = tmp_path / "out"
    first = segment_raster(image, spec, out, regions=regions, region_layer="districts", time=TIME, device="cpu")
    assert not first.skipped and list(first.stats.region.values) == ["d1", "d2"]
    assert segment_raster(image, spec, out, regions=regions, region_layer="districts", time=TIME, device="cpu").skipped
    other = segment_raster(image, spec, out, regions=regions, region_layer="country", time=TIME, device="cpu")
    assert not other.skipped and list(other.stats.region.values) == ["country0"]
    with xr.open_zarr(out / "stats.zarr") as ds:
        entry = ds.sel(time=TIME, scene="tile")
        assert str(entry["regions"].values.item()).endswith("|layername=country")
        assert bool(entry.area_m2.sel(region="d1").isnull().all())  # the districts entry was replaced
    with pytest.raises(InputError, match="--region-layer given without --regions"):
        segment_raster(image, spec, out, region_layer="country", time=TIME, device="cpu")
