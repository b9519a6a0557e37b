"""A study's unexpected error on a Dask worker: its traceback comes back and is logged where the
batch runs, at INFO (what `segpipe -v volume --dask-address` shows); on the worker alone it was lost."""

from __future__ import annotations

import logging

from pipeline.volume import batch
from pipeline.volume.options import VolumeOptions


def test_unexpected_error_on_a_worker_is_logged_with_its_traceback_here(vh, tmp_path, pv_model, monkeypatch, caplog):
    from distributed import LocalCluster

    path = vh.write_nifti(tmp_path / "d1.nii.gz", vh.ct_crop((6, 20, 24)), vh.axis_affine("LAS"))

    def boom(*args, **kwargs):
        raise TypeError("boom on a worker")

    monkeypatch.setattr(batch, "segment_volume", boom)  # in-process workers (processes=False) see it
    with caplog.at_level(logging.INFO, logger="pipeline.volume.batch"):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
            report = batch.segment_volumes([path], vh.per_voxel_spec(tmp_path), tmp_path / "out", VolumeOptions(device="cpu"), model=pv_model,
                                           dask_address=cluster.scheduler_address)
    [failure] = report.failures
    assert "unexpected TypeError: boom on a worker (run with -v for the traceback" in failure.message
    assert "Traceback (most recent call last)" in failure.traceback and "TypeError: boom on a worker" in failure.traceback
    here = [r.getMessage() for r in caplog.records if "on a Dask worker" in r.getMessage()]
    assert len(here) == 1 and "in boom" in here[0] and here[0].rstrip().endswith("TypeError: boom on a worker")
