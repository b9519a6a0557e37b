"""The output folder of ``segpipe volume``: a bad --out fails first, nothing half-written is left, no lock files."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.stats_store import lock
from pipeline.volume.batch import segment_volumes
from pipeline.volume.options import VolumeOptions
from pipeline.volume.run import segment_volume
from pipeline.volume.stats import study_statistics
from pipeline.volume.stats_zarr import merge_into_store, open_stats

CPU = VolumeOptions(device="cpu")


class CountingModel(torch.nn.Module):
    """The per-voxel model, counting its forward calls (to show that nothing was computed)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _raster_store(path):
    """A real raster statistics store (dims time x scene x region x class), as `segpipe raster` writes."""
    ds = xr.Dataset(
        {"area_m2": (("time", "scene", "region", "class"), np.ones((1, 1, 2, 2)))},
        coords={"time": [np.datetime64("2024-06-01")], "scene": ["s"], "region": ["a", "b"], "class": ["water", "forest"]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        ds.to_zarr(path, zarr_format=3, consolidated=True)
    return path


def _study(vh, tmp_path, name="ct"):
    return vh.write_nifti(tmp_path / f"{name}.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LPS"))


def test_out_that_is_a_file_fails_at_once(vh, tmp_path, capsys, pv_model):
    study = _study(vh, tmp_path)
    spec = vh.per_voxel_spec(tmp_path)
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("keep me")
    model = CountingModel(pv_model)
    for call in (segment_volumes, segment_volume):
        with pytest.raises(InputError, match=r"results.txt: is a file, not a folder \(give --out a folder"):
            call([study] if call is segment_volumes else study, spec, not_a_folder, CPU, model=model)
    assert model.calls == 0 and not_a_folder.read_text() == "keep me"
    code = main(["volume", str(study), "--model", "demo-ct", "--out", str(not_a_folder)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"segpipe volume: error: {not_a_folder}: is a file, not a folder (give --out a folder; it is created when missing)\n"


def test_raster_statistics_store_fails_before_any_compute(vh, tmp_path, capsys, pv_model):
    study = _study(vh, tmp_path)
    spec = vh.per_voxel_spec(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    store = _raster_store(out / "stats.zarr")
    model = CountingModel(pv_model)
    for _ in range(2):  # the second run fails the same way (it used to end in an AttributeError)
        with pytest.raises(InputError, match=r"stats.zarr: holds raster statistics .*give segpipe volume its own --out folder"):
            segment_volumes([study], spec, out, CPU, model=model)
        with pytest.raises(InputError, match="holds raster statistics"):
            segment_volume(study, spec, out, CPU, model=model)
    assert model.calls == 0
    assert sorted(os.listdir(out)) == ["stats.zarr"]  # no labels, no .stats.json, no work folder
    assert xr.open_zarr(store)["area_m2"].dims == ("time", "scene", "region", "class")
    code = main(["volume", str(study), "--model", "demo-ct", "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "holds raster statistics (from segpipe raster)" in captured.err and "Traceback" not in captured.err
    assert sorted(os.listdir(out)) == ["stats.zarr"]


def test_failed_write_leaves_no_study_that_looks_done(vh, tmp_path, pv_model):
    """stats.zarr that cannot be merged into: the study fails and none of its files is left behind."""
    study = _study(vh, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.zarr").write_text("not a zarr store")  # a file: neither statistics kind, merging fails
    with pytest.raises(Exception):  # noqa: B017 - whatever zarr raises; the point is what is left
        segment_volume(study, vh.per_voxel_spec(tmp_path), out, CPU, model=pv_model)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["stats.zarr"]


def test_all_studies_failed_prints_no_statistics_and_leaves_no_folder(vh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    out = tmp_path / "new" / "out"
    spec = vh.per_voxel_spec(tmp_path)
    report = segment_volumes([bad], spec, out, CPU)
    assert not report.ok and not out.exists()
    raw = {
        "name": "pv", "task": "volume", "architecture": "torch.nn:Conv3d",
        "params": {"in_channels": 1, "out_channels": 3, "kernel_size": 1}, "in_channels": 1,
        "classes": [{"id": c.id, "name": c.name} for c in spec.classes], "window": [8, 16, 16],
        "normalize": {"kind": "window", "min": -1000, "max": 1000}, "checkpoint": str(spec.checkpoint),
    }
    (tmp_path / "pv.yaml").write_text(yaml.safe_dump(raw))
    code = main(["volume", str(bad), "--model", str(tmp_path / "pv.yaml"), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1 and "1 failed" in captured.out and f"{bad}: cannot open as NIfTI" in captured.out
    assert "statistics:" not in captured.out and not out.exists()


def test_no_lock_file_is_left_and_concurrent_merges_keep_every_row(tmp_path):
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    studies = [study_statistics(f"s{i}", labels, image, np.eye(4), [(0, "bg"), (1, "fg")]) for i in range(8)]
    store = tmp_path / "stats.zarr"
    errors: list[BaseException] = []

    def merge(stats):
        try:
            merge_into_store(stats, store)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=merge, args=(s,)) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(open_stats(store).study.values.tolist()) == [f"s{i}" for i in range(8)]  # a lost update drops a row
    assert sorted(os.listdir(tmp_path)) == ["stats.zarr"]  # no lock file, no temporary store


def test_lock_is_exclusive_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "stats.zarr"
    inside, most = [0], [0]
    guard = threading.Lock()

    def work():
        for _ in range(20):
            with lock(path, "exclusive"):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                threading.Event().wait(0.001)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and os.listdir(tmp_path) == []


def test_a_finished_run_leaves_only_its_outputs(vh, tmp_path, pv_model):
    study = _study(vh, tmp_path)
    out = tmp_path / "out"
    segment_volume(study, vh.per_voxel_spec(tmp_path), out, CPU, model=pv_model)
    assert sorted(os.listdir(out)) == ["ct.labels.ctbl", "ct.labels.json", "ct.labels.nii.gz", "ct.labels.txt", "ct.stats.json", "stats.zarr"]
