"""Scene/study catalogs and study listings: paths resolved once, clear errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.catalog import expand, list_studies, load_scene_catalog, load_study_catalog, model_ref
from pipeline.errors import InputError


def test_scene_catalog_resolves_relative_paths_urls_and_output_token(tmp_path):
    cat = tmp_path / "c" / "nightly.yaml"
    cat.parent.mkdir()
    cat.write_text(
        "model: specs/m.yaml\n"
        "scenes: [a.tif, /abs/b.tif, 'https://example.org/c.tif', '/vsis3/bucket/d.tif', '{output}/e.tif']\n"
        "regions: ../districts.gpkg\n"
        "region_layer: districts\n"
        "output: ../out\n"
    )
    c = load_scene_catalog(cat)
    out = tmp_path / "o"
    assert [expand(s, base=c.source.parent, output=out) for s in c.scenes] == [
        str(cat.parent / "a.tif"), "/abs/b.tif", "https://example.org/c.tif", "/vsis3/bucket/d.tif", str(out / "e.tif"),
    ]
    assert expand(c.regions, base=c.source.parent, output=out) == str(tmp_path / "districts.gpkg")
    assert c.output == tmp_path / "out" and c.demo is None and c.name == "nightly" and c.region_layer == "districts"
    assert model_ref(c.model, c.source.parent) == str(cat.parent / "specs" / "m.yaml")
    assert model_ref("demo-landcover", c.source.parent) == "demo-landcover"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("scenes: []\n", "'scenes' must be a non-empty list"),
        ("scenes: [a.tif]\nmodel: 3\n", "'model' must be a string"),
        ("scenes: [a.tif]\nregion_layer: [a, b]\n", "'region_layer' must be a string"),
        ("scenes: [a.tif]\ndemo: {size: [10]}\n", "demo must be a mapping with size"),
        ("- just\n- a list\n", "a catalog must be a YAML mapping"),
        ("scenes: [a.tif\n", "not valid YAML"),
    ],
)
def test_bad_scene_catalogs_name_the_file_and_problem(tmp_path, text, problem):
    cat = tmp_path / "bad.yaml"
    cat.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        load_scene_catalog(cat)
    assert info.value.path == str(cat)


def test_missing_catalog_and_bad_study_demo(tmp_path):
    with pytest.raises(InputError, match="catalog file not found"):
        load_study_catalog(tmp_path / "nope.yaml")
    cat = tmp_path / "s.yaml"
    cat.write_text("studies: [a.nii.gz]\ndemo: {shape: [16, 32]}\n")
    with pytest.raises(InputError, match=r"shape: \[Z, Y, X\]"):
        load_study_catalog(cat)


def test_list_studies_folder_glob_and_file(tmp_path):
    for name in ("b.nii.gz", "a.nii", "notes.txt", ".hidden.nii.gz", "pair.hdr", "pair.img"):
        (tmp_path / name).write_bytes(b"x")
    series = tmp_path / "dicom-series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "stats.zarr").mkdir()
    (tmp_path / "stats.zarr" / "zarr.json").write_text("{}")
    assert [Path(p).name for p in list_studies(tmp_path)] == ["a.nii", "b.nii.gz", "dicom-series", "pair.hdr"]  # a pair once, by its header
    assert [Path(p).name for p in list_studies(str(tmp_path / "*.nii*"))] == ["a.nii", "b.nii.gz"]
    assert list_studies(tmp_path / "a.nii") == [str(tmp_path / "a.nii")]
    with pytest.raises(InputError, match="no studies found"):
        list_studies(str(tmp_path / "*.dcm"))
    with pytest.raises(InputError, match="not a folder, a glob pattern or a catalog YAML"):
        list_studies(tmp_path / "notes.txt")
