"""Which settings a ``landcover`` run takes from where: explicit ``scenes`` replace the whole catalog
(the ``landcover/nightly`` deployment always passes its default ``catalog``), the regions file is
checked once before any scene, and the flow's messages name flow parameters, not CLI options.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from flows.landcover import plan_scenes
from pipeline.errors import InputError

CRS = "EPSG:32633"
DEMO = "catalogs/scenes/demo.yaml"


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "tile.tif"
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "uint16", "crs": CRS, "transform": Affine(10, 0, 500_000, 0, -10, 5_350_000)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((4, 16, 16), 1800, np.uint16))
    return path


def test_scenes_replace_the_deployment_default_catalog(scene, tmp_path):
    plan = plan_scenes(DEMO, [str(scene)], "demo-landcover", None, None, str(tmp_path / "out"))
    assert plan.todo == (("tile", str(scene)),)
    assert plan.regions is None and plan.region_field is None and plan.bands is None  # nothing from the demo catalog
    assert not (tmp_path / "out" / "demo-inputs").exists()  # no demo inputs generated either


def test_scenes_without_a_model_name_the_model_parameter(scene, tmp_path):
    with pytest.raises(InputError, match=r"^model: no model given \(pass model=<name or spec.yaml>"):
        plan_scenes(DEMO, [str(scene)], None, None, None, str(tmp_path / "out"))


def test_a_missing_regions_file_is_refused_once_naming_the_parameter(scene, tmp_path):
    missing = tmp_path / "districts.geojson"
    with pytest.raises(InputError) as caught:
        plan_scenes(None, [str(scene)], "demo-landcover", str(missing), None, str(tmp_path / "out"))
    message = str(caught.value)
    assert message.startswith(f"{missing}: regions file not found (check the regions= parameter")
    assert "--regions" not in message


def test_a_catalog_naming_a_missing_regions_file_is_refused_naming_the_catalog(scene, tmp_path):
    catalog = tmp_path / "nightly.yaml"
    catalog.write_text(f"model: demo-landcover\nscenes: [{scene}]\nregions: gone.gpkg\n")
    with pytest.raises(InputError, match=rf"gone.gpkg: regions file not found \(check regions: in {catalog}"):
        plan_scenes(str(catalog), None, None, None, None, str(tmp_path / "out"))


def test_region_field_without_regions_names_both_parameters(scene, tmp_path):
    with pytest.raises(InputError, match=r"region_field='name' given without regions \(pass regions=<vector file> too"):
        plan_scenes(None, [str(scene)], "demo-landcover", None, "name", str(tmp_path / "out"))


def test_library_messages_name_flow_parameters():
    from flows._runtime import failure_of

    raised = InputError("t.tif", "band(s) [9] requested but the file has 4 band(s)", "pick bands between 1 and 4 with --bands")
    assert failure_of("t.tif", raised).message == "t.tif: band(s) [9] requested but the file has 4 band(s) (pick bands between 1 and 4 with bands=)"
    raised = InputError("d.gpkg", "no attribute 'nme' (available attributes: name)", "pick one with --region-field")
    assert failure_of("t.tif", raised).message.endswith("(pick one with region_field=)")


@pytest.mark.usefixtures("prefect_server")
def test_nightly_deployment_parameters_with_scenes_run_without_the_demo_regions(scene, tmp_path, pointwise_spec):
    """The reviewer's case: the deployment's catalog (demo) plus scenes given at run time."""
    from flows.landcover import landcover

    spec = pointwise_spec(tmp_path / "model", task="raster", weight=np.array([[0.0, 0, 0, 0], [0, 0, 0, 1]]), bias=np.array([0.0, -1500.0]),
                          classes=[(0, "water"), (1, "forest")], window=[8, 8])
    state = landcover(catalog=DEMO, scenes=[str(scene)], model=str(spec), out=str(tmp_path / "out"), device="cpu", return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert not report.failures and [o.name for o in report.outputs] == ["tile"]

    state = landcover(catalog=DEMO, scenes=[str(scene)], model=str(spec), regions=str(tmp_path / "nope.geojson"), out=str(tmp_path / "o2"),
                      device="cpu", return_state=True)
    assert state.is_failed() and "regions file not found (check the regions= parameter" in state.message
    assert not (tmp_path / "o2" / "tile.labels.tif").exists()  # refused before any scene


def _two_layers(path):
    """A GeoPackage with layers ``country`` then ``districts`` over the ``scene`` tile."""
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame({"name": ["all"]}, geometry=[box(499_000, 5_349_000, 501_000, 5_351_000)], crs=CRS).to_file(path, layer="country", driver="GPKG")
    gpd.GeoDataFrame({"name": ["d1"]}, geometry=[box(500_000, 5_349_840, 500_080, 5_350_000)], crs=CRS).to_file(path, layer="districts", driver="GPKG")
    return path


def test_a_regions_file_with_several_layers_needs_region_layer_before_any_scene(scene, tmp_path):
    regions = _two_layers(tmp_path / "two.gpkg")
    with pytest.raises(InputError) as caught:
        plan_scenes(None, [str(scene)], "demo-landcover", str(regions), None, str(tmp_path / "out"))
    assert str(caught.value) == f"{regions}: 2 layers (country, districts) and none named to take the regions from (pick the layer with region_layer=<name>)"
    with pytest.raises(InputError, match=r"no layer 'district' \(layers: country, districts\) \(pick the layer with region_layer=<name>\)$"):
        plan_scenes(None, [str(scene)], "demo-landcover", str(regions), None, str(tmp_path / "out"), region_layer="district")
    plan = plan_scenes(None, [str(scene)], "demo-landcover", str(regions), None, str(tmp_path / "out"), region_layer="districts")
    assert plan.region_layer == "districts"
    with pytest.raises(InputError, match=r"region_layer='districts' given without regions \(pass regions=<vector file> too, or leave region_layer out\)"):
        plan_scenes(None, [str(scene)], "demo-landcover", None, None, str(tmp_path / "out"), region_layer="districts")


def test_a_catalog_region_layer_goes_with_the_catalog_regions_only(scene, tmp_path):
    _two_layers(tmp_path / "two.gpkg")
    catalog = tmp_path / "nightly.yaml"
    catalog.write_text(f"model: demo-landcover\nscenes: [{scene}]\nregions: two.gpkg\n")
    with pytest.raises(InputError, match=rf"\(pick the layer with region_layer=<name> or region_layer: in {catalog}\)$"):
        plan_scenes(str(catalog), None, None, None, None, str(tmp_path / "out"))
    catalog.write_text(f"model: demo-landcover\nscenes: [{scene}]\nregions: two.gpkg\nregion_layer: districts\n")
    assert plan_scenes(str(catalog), None, None, None, None, str(tmp_path / "out")).region_layer == "districts"
    # regions= replaces the catalog's file, and its layer with it
    one = tmp_path / "one.gpkg"
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame({"name": ["a"]}, geometry=[box(500_000, 5_349_900, 500_100, 5_350_000)], crs=CRS).to_file(one, driver="GPKG")
    plan = plan_scenes(str(catalog), None, None, str(one), None, str(tmp_path / "out"))
    assert plan.regions == str(one) and plan.region_layer is None


def test_region_layer_messages_name_the_flow_parameter():
    from flows._runtime import failure_of

    raised = InputError("two.gpkg", "2 layers (country, districts) and none named to take the regions from", "pick the layer with --region-layer NAME")
    assert failure_of("t.tif", raised).message.endswith("(pick the layer with region_layer=<name>)")
    raised = InputError("x", "--region-layer given without --regions", "add --regions FILE")
    assert failure_of("t.tif", raised).message == "x: region_layer= given without regions= (add regions=<file>)"


def test_failure_messages_keep_their_text_in_both_flows_summary_tables():
    """One escape for both flows' markdown summaries: ``|`` stays visible (the volumes flow turned it into ``/``)."""
    from flows._runtime import markdown_cell

    message = "ct|1.nii.gz: 3 dims\nneed 3 | 4"
    assert markdown_cell(message) == "ct\\|1.nii.gz: 3 dims need 3 \\| 4"
    row = f"| {markdown_cell(message)} |"
    assert len([c for c in row.replace("\\|", "") if c == "|"]) == 2  # one cell
