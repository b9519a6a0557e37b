"""The synthetic land-cover scene: determinism, classes, spectra, and real georeferenced files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import rasterio

from pipeline.demo.scene import (
    CLASS_NAMES,
    FIELDS,
    FOREST,
    ROADS,
    URBAN,
    WATER,
    district_polygons,
    synthetic_scene,
    write_regions_geojson,
    write_scene_geotiff,
)

NIR, RED = 3, 2


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene(7, (512, 512))


def test_same_seed_same_scene_other_seed_other_scene(scene):
    image, truth = scene
    again_image, again_truth = synthetic_scene(7, (512, 512))
    other_image, other_truth = synthetic_scene(8, (512, 512))
    assert np.array_equal(image, again_image) and np.array_equal(truth, again_truth)
    assert not np.array_equal(truth, other_truth)
    assert not np.array_equal(image, other_image)


def test_shapes_dtypes_and_every_class_present(scene):
    image, truth = scene
    assert image.shape == (4, 512, 512) and image.dtype == np.uint16
    assert truth.shape == (512, 512) and truth.dtype == np.uint8
    assert set(np.unique(truth).tolist()) == set(range(len(CLASS_NAMES)))
    assert image.min() >= 1 and image.max() <= 10_000


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_class_present_at_full_size_and_not_marginal(seed):
    _, truth = synthetic_scene(seed)
    share = np.bincount(truth.ravel(), minlength=5) / truth.size
    assert share.min() > 0.01, share
    assert share[FIELDS] == share.max()


def test_spectra_are_plausible(scene):
    image, truth = scene
    mean = {c: image[:, truth == c].astype(np.float64).mean(axis=1) for c in range(5)}
    ndvi = {c: (m[NIR] - m[RED]) / (m[NIR] + m[RED]) for c, m in mean.items()}
    # water is dark in the NIR; vegetation is bright in the NIR and has the highest NDVI
    assert mean[WATER][NIR] < mean[WATER][RED] < mean[FOREST][NIR]
    assert mean[WATER][NIR] < min(mean[c][NIR] for c in (FOREST, FIELDS, URBAN, ROADS))
    assert ndvi[FOREST] > 0.6 and ndvi[FIELDS] > 0.3
    assert ndvi[WATER] < 0 and abs(ndvi[URBAN]) < 0.15 and abs(ndvi[ROADS]) < 0.15
    # urban roofs are bright and flat across the visible bands, roads darker than roofs
    assert mean[URBAN][:3].min() > 1200 and np.ptp(mean[URBAN][:3]) < 0.1 * mean[URBAN][:3].mean()
    assert mean[ROADS][:3].max() < mean[URBAN][:3].min()


def test_texture_and_noise(scene):
    image, truth = scene
    # forest canopy is rough, water smooth (relative std in the NIR)
    cv = {c: image[NIR][truth == c].std() / image[NIR][truth == c].mean() for c in (WATER, FOREST)}
    assert cv[FOREST] > 0.1 and cv[WATER] < 0.2
    # no two neighbouring pixels of a flat road are identical everywhere: there is sensor noise
    road = image[:, truth == ROADS]
    assert road.std(axis=1).min() > 10


def test_fast_enough():
    # CPU time, not wall time: the test machine is shared, and CPU seconds are what the budget is about
    start = time.process_time()
    synthetic_scene(3)
    assert time.process_time() - start < 2.0


def test_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        synthetic_scene(0, (64, 64))


def test_geotiff_has_crs_transform_bands(tmp_path, scene):
    image, truth = scene
    path = write_scene_geotiff(tmp_path / "scene.tif", image, origin=(400_000.0, 5_300_000.0), pixel=10.0)
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32633
        assert src.crs.is_projected and src.crs.linear_units in ("metre", "meter")
        assert tuple(src.transform)[:6] == (10.0, 0.0, 400_000.0, 0.0, -10.0, 5_300_000.0)
        assert (src.count, src.height, src.width) == (4, 512, 512)
        assert src.dtypes == ("uint16",) * 4
        assert src.descriptions == ("B", "G", "R", "NIR")
        assert [c.name for c in src.colorinterp] == ["blue", "green", "red", "undefined"]
        assert src.profile["tiled"]
        assert np.array_equal(src.read(), image)
    label_path = write_scene_geotiff(tmp_path / "truth.tif", truth, band_names=None)
    with rasterio.open(label_path) as src:
        assert src.count == 1 and src.dtypes == ("uint8",)
        assert np.array_equal(src.read(1), truth)


def test_regions_geojson_named_districts_inside_the_scene(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    size = (512, 768)
    path = write_regions_geojson(tmp_path / "districts.geojson", size, origin=(400_000.0, 5_300_000.0), pixel=10.0)
    raw = json.loads(path.read_text())
    assert [f["properties"]["name"] for f in raw["features"]] == list(district_polygons(size))
    regions = gpd.read_file(path)
    assert regions.crs.to_epsg() == 4326
    utm = regions.to_crs("EPSG:32633")
    scene = box(400_000.0, 5_300_000.0 - 512 * 10.0, 400_000.0 + 768 * 10.0, 5_300_000.0)
    for geom in utm.geometry:
        assert geom.is_valid
        assert geom.difference(scene).area < 1.0  # m^2: inside the scene up to rounding
    # Northfield: the northern third, full width, within a metre of its nominal area
    north = utm.geometry[regions.name == "Northfield"].iloc[0]
    assert north.area == pytest.approx(768 * 10 * 0.33 * 512 * 10, abs=50.0)
    # together the districts cover part, not all, of the scene
    covered = utm.union_all().area / scene.area
    assert 0.5 < covered < 0.95
