"""Spec values of the wrong type, unknown keys and run-time-only mistakes are refused at load,
each with a ModelSpecError naming the spec file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.spec import load_spec
from pipeline.errors import ModelSpecError

BASE = {
    "name": "e",
    "task": "raster",
    "architecture": "torch.nn:Conv2d",
    "params": {"in_channels": 4, "out_channels": 3, "kernel_size": 1},
    "in_channels": 4,
    "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}],
    "window": [64, 64],
    "overlap": 0.25,
    "blend": "gaussian",
    "normalize": {"kind": "none"},
    "checkpoint": None,
}


def write(tmp_path: Path, **changes) -> Path:
    raw = {**BASE, **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(ModelSpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"in_channels": "four"}, ("in_channels must be an integer, got 'four'", "in_channels: 4")),
        ({"in_channels": [8, 16]}, ("in_channels must be an integer, got [8, 16]",)),
        ({"in_channels": True}, ("in_channels must be an integer",)),
        ({"window": 64}, ("window must be a list of 2 sizes [y, x], got 64", "window: [64, 64]")),
        ({"window": [64.7, 64]}, ("window must be an integer, got 64.7",)),
        ({"window": ["a", 64]}, ("window must be an integer, got 'a'",)),
        ({"overlap": "quarter"}, ("overlap must be a number, got 'quarter'",)),
        ({"spacing": 3}, ("spacing must be a list of numbers",)),
        ({"checkpoint": ["a.safetensors"]}, ("checkpoint must be a file path",)),
        ({"params": [1, 2]}, ("params must be a mapping",)),
        ({"nodata": "none"}, ("nodata must be an integer",)),
        ({"normalize": {"kind": "scale", "factor": "big"}}, ("normalize factor must be a number",)),
        ({"normalize": {"kind": "meanstd", "mean": 5, "std": [1]}}, ("normalize mean must be a list of numbers",)),
        ({"normalize": {"kind": "window", "min": "low", "max": 1}}, ("normalize min must be a number",)),
    ],
)
def test_wrong_types_are_refused_naming_the_key(tmp_path, changes, fragments):
    refused(write(tmp_path, **changes), *fragments)


def test_integral_floats_are_accepted(tmp_path):
    spec = load_spec(write(tmp_path, window=[64.0, 32], in_channels=4.0))
    assert spec.window == (64, 32) and spec.in_channels == 4
    assert all(isinstance(w, int) for w in spec.window)


def test_class_id_of_the_wrong_type(tmp_path):
    classes = [{"id": 0, "name": "a"}, {"id": "two", "name": "b"}]
    refused(write(tmp_path, classes=classes), "classes[1].id must be an integer, got 'two'")


# --- unknown keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("checkpiont", "checkpoint"), ("overlapp", "overlap"), ("in_channel", "in_channels"), ("colour_table", None)],
)
def test_unknown_top_level_keys_are_refused_with_a_close_match(tmp_path, key, suggestion):
    path = write(tmp_path, **{key: "x"})
    message = refused(path, f"unknown key '{key}' in the model spec", "Known keys: name, task, architecture")
    if suggestion:
        assert f"did you mean '{suggestion}'?" in message
    else:
        assert "did you mean" not in message


def test_a_misspelt_checkpoint_no_longer_gives_random_weights(tmp_path):
    raw = {k: v for k, v in BASE.items() if k != "checkpoint"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**raw, "checkpiont": "weights.safetensors"}))
    refused(path, "unknown key 'checkpiont'", "did you mean 'checkpoint'?")


@pytest.mark.parametrize(
    ("normalize", "fragments"),
    [
        ({"kind": "scale", "factor": 0.1, "mean": [1]}, ("unknown key 'mean' in normalize (kind: scale)", "kind scale takes factor")),
        ({"kind": "window", "min": 0, "max": 100, "mean": [3]}, ("unknown key 'mean' in normalize (kind: window)",)),
        ({"kind": "meanstd", "mean": [1], "stdd": [1]}, ("unknown key 'stdd'", "did you mean 'std'?")),
        ({"kind": "zscore", "factor": 2}, ("unknown key 'factor' in normalize (kind: zscore)", "kind zscore takes no other keys")),
        ({"mean": [1], "std": [1]}, ("unknown key 'mean' in normalize (kind: none)",)),
    ],
)
def test_unknown_normalize_keys_for_the_kind(tmp_path, normalize, fragments):
    refused(write(tmp_path, normalize=normalize), *fragments)


def test_unknown_class_keys(tmp_path):
    classes = [{"id": 0, "name": "a", "colour": "#000000"}, {"id": 1, "name": "b"}]
    refused(write(tmp_path, classes=classes), "unknown key 'colour' in class entry", "did you mean 'color'?")


def test_every_catalog_spec_still_loads():
    from models.catalog import list_catalog

    entries = list_catalog()
    assert entries
    assert [(e.name, e.error) for e in entries if e.error] == []


# --- checks that used to wait for the first scene -----------------------------------------------------


@pytest.mark.parametrize("bad", ["#zzzzzz", "#12345", "rouge", "1f78b4"])
def test_bad_colours_are_refused_at_load(tmp_path, bad):
    classes = [{"id": 0, "name": "a"}, {"id": 1, "name": "b", "color": bad}]
    refused(write(tmp_path, classes=classes), f"classes[1].color {bad!r} is not a colour", "#rrggbb")


def test_named_colours_become_hex(tmp_path):
    classes = [{"id": 0, "name": "a", "color": "red"}, {"id": 1, "name": "b", "color": "tab:blue"}, {"id": 2, "name": "c", "color": "#1F78B4"}]
    spec = load_spec(write(tmp_path, classes=classes))
    assert [c.color for c in spec.classes] == ["#ff0000", "#1f77b4", "#1F78B4"]
    assert spec.classes[0].rgb == (255, 0, 0)


@pytest.mark.parametrize("nodata", [-1, 65536, 70000])
def test_nodata_outside_the_label_range_is_refused(tmp_path, nodata):
    refused(write(tmp_path, nodata=nodata), f"nodata {nodata} is outside the label range 0..65535")


def test_nodata_above_255_is_still_allowed(tmp_path):
    assert load_spec(write(tmp_path, nodata=300)).nodata == 300


def test_scale_factor_zero_names_the_spec_file(tmp_path):
    refused(write(tmp_path, normalize={"kind": "scale", "factor": 0}), "normalize scale factor 0 erases the image", "non-zero factor")


def test_duplicate_class_names_are_refused(tmp_path):
    classes = [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "b"}]
    refused(write(tmp_path, classes=classes), "class names are not unique: ['b']", "give every class its own name")


def test_orientation_on_a_raster_spec_is_refused(tmp_path):
    """It would be silently ignored: rasters are segmented on their own grid."""
    refused(write(tmp_path, orientation="RAS"), "orientation 'RAS' is set on a raster model", "applies to volume models")
    assert load_spec(write(tmp_path, orientation=None)).orientation is None


def test_an_enormous_window_is_refused_at_load(tmp_path):
    refused(write(tmp_path, window=[60000, 60000]), "window [60000, 60000] holds 3,600,000,000 pixels/voxels, more than 67,108,864")
    assert load_spec(write(tmp_path, window=[8192, 8192])).window == (8192, 8192)
