"""pipeline.outputs: a bad --out fails before any work, and raster and volume statistics never mix."""

from __future__ import annotations

import pytest

from pipeline.errors import InputError
from pipeline.outputs import check_stats_store, prepare_output_dir, stats_store_kind


def test_prepare_output_dir_creates_folders_and_refuses_files(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file: is a file, not a folder"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(InputError, match="is a file, so the folder cannot be created"):
        prepare_output_dir(tmp_path / "file" / "sub")


def _store(path, names):
    path.mkdir()
    for name in names:
        (path / name).mkdir()
    return path


def test_store_kinds_are_told_apart_and_not_mixed(tmp_path):
    raster = _store(tmp_path / "r.zarr", ["time", "scene", "region", "class", "area_m2"])
    volume = _store(tmp_path / "v.zarr", ["study", "label", "volume_ml"])
    assert stats_store_kind(raster) == "raster" and stats_store_kind(volume) == "volume"
    assert stats_store_kind(tmp_path / "missing.zarr") is None
    check_stats_store(raster, "raster")
    check_stats_store(tmp_path / "missing.zarr", "volume")
    with pytest.raises(InputError, match="holds raster statistics .*give segpipe volume its own --out folder"):
        check_stats_store(raster, "volume")
    with pytest.raises(InputError, match="holds volume statistics"):
        check_stats_store(volume, "raster")
