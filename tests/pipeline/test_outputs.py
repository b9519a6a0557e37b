"""pipeline.outputs: a bad --out fails before any work, and raster and volume statistics never mix."""

from __future__ import annotations

import errno

import pytest

from pipeline.errors import InputError
from pipeline.outputs import (
    check_stats_store,
    output_write_error,
    prepare_output_dir,
    stats_store_kind,
)


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


def test_read_only_output_folder_is_refused_up_front(tmp_path, tmpfs):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        with pytest.raises(InputError) as caught:
            prepare_output_dir(ro)
        assert str(caught.value) == f"{ro}: not writable: read-only file system (choose another --out)"
        with pytest.raises(InputError) as caught:
            prepare_output_dir(ro / "sub")
        assert str(caught.value) == f"{ro / 'sub'}: cannot create the output folder: read-only file system (choose another --out)"


def test_unwritable_output_folder_is_refused_and_not_left_behind(tmp_path, monkeypatch):
    """Permission denied cannot be made real as root (which these tests may run as): the temporary file's creation fails."""
    from pipeline import outputs

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr(outputs.tempfile, "mkstemp", denied)
    with pytest.raises(InputError) as caught:
        prepare_output_dir(tmp_path / "new")
    assert str(caught.value) == f"{tmp_path / 'new'}: not writable: permission denied (choose another --out, or make it writable)"
    assert not (tmp_path / "new").exists()  # the folder it created is removed again
    monkeypatch.undo()
    assert prepare_output_dir(tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []  # the check leaves nothing


def test_output_write_error_names_the_folder_and_the_fix(tmp_path):
    full = output_write_error(tmp_path, OSError(errno.ENOSPC, "No space left on device"), writing="the outputs of case01")
    assert str(full) == f"{tmp_path}: no space left on device writing the outputs of case01 (free space or choose another --out)"
    quota = output_write_error(tmp_path, OSError(errno.EDQUOT, "Disk quota exceeded"), writing="x")
    assert str(quota) == f"{tmp_path}: disk quota exceeded writing x (free space or choose another --out)"
    assert output_write_error(tmp_path, OSError(errno.EROFS, "Read-only file system"), writing="x").problem == "read-only file system writing x"
    assert output_write_error(tmp_path, OSError(errno.EIO, "Input/output error"), writing="x") is None
    assert output_write_error(tmp_path, FileNotFoundError(errno.ENOENT, "No such file"), writing="x") is None


def test_output_write_error_is_none_for_a_file_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    inside = OSError(errno.EACCES, "Permission denied", str(out / "a" / "b.tif"))
    assert output_write_error(out, inside, writing="x").problem == "permission denied writing x"
    outside = OSError(errno.EACCES, "Permission denied", str(tmp_path / "scene.tif"))  # the input's problem
    assert output_write_error(out, outside, writing="x") is None
    assert output_write_error(out, OSError(errno.EROFS, "Read-only file system", str(out / ".." / "x")), writing="x") is None


@pytest.mark.parametrize("command", ["raster", "volume"])
def test_cli_refuses_an_unwritable_out_with_exit_2(tmp_path, monkeypatch, capsys, command):
    from pipeline import outputs
    from pipeline.cli import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir")))

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    model = {"raster": "demo-landcover", "volume": "demo-ct"}[command]
    out = tmp_path / "out"
    out.mkdir()
    code = main([command, str(tmp_path / "missing-input"), "--model", model, "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"{out}: not writable: read-only file system (choose another --out)" in err
    assert "Traceback" not in err and "unexpected" not in err and list(out.iterdir()) == []
