"""A remote scene's version on its server (ETag, else Last-Modified, and size) in the work store's
signature and in the entry's provenance: a killed run's work store is reused for the same object
only, and a finished entry is done only for the same object.

Before: a URL's signature and fingerprint held its public URL only, so an object replaced on the
server between a killed run and its retry (the same URL) resumed from the old object's ingest, and
a finished entry was skipped as done; GDAL's ``/vsicurl/`` cache also served the old object's bytes
to a later open in the same process (a Prefect retry). Real HTTP server in its own process
(``range_server.py``), real GeoTIFFs and runs."""

from __future__ import annotations

import json
import logging
import shutil
import time as _time

import numpy as np
import pytest
import rasterio
from affine import Affine

from flows._runtime import is_io_error
from pipeline.errors import InputError
from pipeline.raster.ingest import ingest_raster
from pipeline.raster.object_version import ObjectVersion, object_version
from pipeline.raster.run import segment_raster
from pipeline.stats_store import open_stats
from tests.raster import test_raster_remote as remote
from tests.raster.test_raster_stats_contents import _model, _spec_file

serve = remote.serve  # the fixture: a real HTTP server in its own process (range_server.py)
SIGNED, SIGNED_AGAIN = remote.SIGNED, remote.SIGNED_AGAIN

TIME = "2024-06-01T01:00:00"
SECRET = "c2VjcmV0"  # in the signatures of SIGNED and SIGNED_AGAIN


def _write(path, seed, *, size=384):
    """A 3-band uint8 scene, tiled 128: the same size whatever the seed (a replaced object need not change size)."""
    data = np.random.default_rng(seed).integers(1, 200, size=(3, size, size), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(10, 0, 500000, 0, -10, 6000000), "tiled": True, "blockxsize": 128, "blockysize": 128}
    tmp = path.with_name(path.name + ".new")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    _time.sleep(0.01)  # a new modification time (and so a new ETag) even on a coarse clock
    tmp.replace(path)  # the object replaced whole, as an upload to an object store does
    return path


class _KilledAfter:
    """The per-pixel model, interrupted (as Ctrl-C or a kill is) at its ``calls + 1``-th batch."""

    def __init__(self, calls: int) -> None:
        self.model, self.calls, self.made = _model(), calls, 0

    def __call__(self, x):
        self.made += 1
        if self.made > self.calls:
            raise KeyboardInterrupt
        return self.model(x)

    def eval(self):
        return self


def _labels(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _fresh(tmp_path, scene, spec, name):
    """An uninterrupted run of a local copy of the object as it is now."""
    local = shutil.copy(scene, tmp_path / f"{name}.tif")
    return segment_raster(local, spec, tmp_path / name, time=TIME, device="cpu", block=128)


def _kill(url, spec, out):
    with pytest.raises(KeyboardInterrupt):
        segment_raster(url, spec, out, time=TIME, device="cpu", block=128, model=_KilledAfter(4))
    assert (out / ".work" / "tile.zarr" / "zarr.json").is_file()  # the killed run's work store, to resume from


def test_a_killed_run_resumes_for_the_same_object_and_starts_over_for_a_replaced_one(tmp_path, serve):
    base = serve()
    spec = _spec_file(tmp_path / "model")
    scene = _write(serve.root / "tile.tif", seed=1)
    out = tmp_path / "out"

    # the same object: the retry (a URL signed anew) resumes from the killed run's work store, as for a local file
    _kill(f"{base}/tile.tif{SIGNED}", spec, out)
    stored = (out / ".work" / "tile.zarr" / "zarr.json").read_text()
    assert '"etag"' in stored and SECRET not in stored  # the version is recorded, the credentials are not
    resumed = segment_raster(f"{base}/tile.tif{SIGNED_AGAIN}", spec, out, time=TIME, device="cpu", block=128)
    assert resumed.engine.blocks_skipped > 0
    first = _fresh(tmp_path, scene, spec, "first")
    assert np.array_equal(_labels(resumed.labels_path), _labels(first.labels_path))

    # killed again (another night), then the object is replaced on the server before the retry: nothing of the old one is reused
    night2 = "2024-06-02T01:00:00"
    with pytest.raises(KeyboardInterrupt):
        segment_raster(f"{base}/tile.tif{SIGNED}", spec, out, time=night2, device="cpu", block=128, model=_KilledAfter(4))
    _write(scene, seed=2)
    retried = segment_raster(f"{base}/tile.tif{SIGNED_AGAIN}", spec, out, time=night2, device="cpu", block=128)
    assert retried.engine.blocks_skipped == 0  # ingested and segmented again (the old labels went with the old ingest)
    second = _fresh(tmp_path, scene, spec, "second")
    assert np.array_equal(_labels(retried.labels_path), _labels(second.labels_path))
    assert not np.array_equal(_labels(second.labels_path), _labels(first.labels_path))  # the objects do differ
    ours, fresh = open_stats(out / "stats.zarr"), open_stats(second.stats_path)
    assert ours["area_m2"].sel(time=np.datetime64(night2)).values.tolist() == fresh["area_m2"].sel(time=np.datetime64(TIME)).values.tolist()


def test_a_finished_entry_is_done_for_the_same_object_only(tmp_path, serve):
    """A retried night skips the scenes it finished, unless the object was replaced on the server since."""
    base = serve()
    spec = _spec_file(tmp_path / "model")
    scene = _write(serve.root / "tile.tif", seed=1)
    out = tmp_path / "out"
    segment_raster(f"{base}/tile.tif{SIGNED}", spec, out, time=TIME, device="cpu", block=128)
    again = segment_raster(f"{base}/tile.tif{SIGNED_AGAIN}", spec, out, time=TIME, device="cpu", block=128, model=_KilledAfter(0))
    assert again.skipped

    _write(scene, seed=2)
    redone = segment_raster(f"{base}/tile.tif{SIGNED_AGAIN}", spec, out, time=TIME, device="cpu", block=128)
    assert not redone.skipped  # this process read the first object before: GDAL's cache must not hand it back
    fresh = _fresh(tmp_path, scene, spec, "fresh")
    assert np.array_equal(_labels(redone.labels_path), _labels(fresh.labels_path))
    stats = open_stats(out / "stats.zarr")
    assert stats["area_m2"].values.tolist() == open_stats(fresh.stats_path)["area_m2"].values.tolist()  # the entry replaced, not added
    assert SECRET not in json.dumps({v: str(stats[v].values.tolist()) for v in stats.data_vars if set(stats[v].dims) <= {"time", "scene"}})


def test_a_server_without_validators_never_gets_its_work_reused(tmp_path, serve, caplog):
    base = serve("--no-validators")
    spec = _spec_file(tmp_path / "model")
    _write(serve.root / "tile.tif", seed=1)
    out = tmp_path / "out"
    url = f"{base}/tile.tif{SIGNED}"

    caplog.set_level(logging.WARNING, logger="pipeline.raster.object_version")
    _kill(url, spec, out)
    retried = segment_raster(url, spec, out, time=TIME, device="cpu", block=128)
    assert retried.engine.blocks_skipped == 0  # the killed run's store could hold another object's pixels
    again = segment_raster(url, spec, out, time=TIME, device="cpu", block=128)
    assert not again.skipped  # nor is a finished entry taken as done
    assert open_stats(out / "stats.zarr")["inputs_sha256"].values.item() == ""
    warnings = [r.getMessage() for r in caplog.records if "sends no ETag or Last-Modified" in r.getMessage()]
    assert len(warnings) == 1 and SECRET not in warnings[0] and "sig=REDACTED" in warnings[0]  # once, for three runs


def test_a_url_signed_for_get_only_is_asked_with_a_one_byte_get(tmp_path, serve):
    """S3/GCS/Azure URLs presigned for GET answer HEAD with 403: the version comes from ``Range: bytes=0-0``."""
    log = tmp_path / "requests.log"
    base = serve("--no-head", "--log", str(log))
    scene = _write(serve.root / "tile.tif", seed=1)
    version = object_version(f"/vsicurl/{base}/tile.tif{SIGNED}")
    assert version.validator == "etag" and version.length == scene.stat().st_size
    assert log.read_text().splitlines() == ["HEAD /tile.tif" + SIGNED + " ", "GET /tile.tif" + SIGNED + " bytes=0-0"]


def test_a_password_in_the_url_is_sent_as_basic_authentication_and_never_shown(tmp_path, serve):
    base = serve("--auth", "reader:s3cret")
    _write(serve.root / "tile.tif", seed=1)
    url = base.replace("://", "://reader:s3cret@") + "/tile.tif"
    assert object_version(url).validator == "etag"
    refused = object_version(url.replace("s3cret", "wrong"))
    assert refused.validator == "none" and "401" in refused.reason and "s3cret" not in refused.reason + refused.text()


def test_what_is_asked_and_what_is_not(tmp_path, serve):
    base = serve()
    scene = _write(serve.root / "tile.tif", seed=1)
    etag = object_version(f"{base}/tile.tif")
    assert etag.validator == "etag" and etag.length == scene.stat().st_size and etag.reusable
    assert object_version(f"{base}/tile.tif") == etag  # the same object, the same version
    _write(scene, seed=1)  # the same bytes uploaded again: a new version (the server cannot tell it is the same)
    assert object_version(f"{base}/tile.tif") != etag
    assert object_version(scene) == ObjectVersion("not asked")  # local: its size and mtime are read instead
    for unasked in ("s3://bucket/tile.tif", "/vsis3/bucket/tile.tif", "/vsiaz/c/tile.tif", "/vsizip//vsicurl/http://h/a.zip/t.tif"):
        assert object_version(unasked).validator == "not asked"  # kept as before: reused on the path alone
    missing = object_version(f"{base}/nothere.tif")
    assert missing.validator == "none" and not missing.reusable and "404" in missing.reason

    lm = serve("--no-range")  # Python's plain file server: Last-Modified, no ETag
    version = object_version(f"{lm}/tile.tif")
    assert version.validator == "last-modified" and version.length == scene.stat().st_size


def test_an_object_replaced_while_it_is_ingested_fails_the_ingest_for_a_retry(tmp_path, serve):
    base = serve()
    scene = _write(serve.root / "tile.tif", seed=1)
    work = tmp_path / "work.zarr"

    def replace_after_first_tile(done, total):
        if done == 1:
            _write(scene, seed=2)

    with pytest.raises(InputError, match="replaced on the server while it was read") as replaced:
        ingest_raster(f"{base}/tile.tif{SIGNED}", work, block=128, progress=replace_after_first_tile)
    assert is_io_error(replaced.value) and SECRET not in str(replaced.value)  # the flow retries it
    assert not work.exists() and not list(tmp_path.glob("work.zarr.tmp-*"))
