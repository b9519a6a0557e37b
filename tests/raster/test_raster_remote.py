"""Remote scenes (the mission's "GeoTIFF/COG, local or remote"): a real HTTP server on 127.0.0.1 that
answers range requests, as object stores do; GDAL reads the scene through ``/vsicurl``.

A URL gives exactly the labels of the same file read locally, and a server failing part-way
through fails the scene (it did not: the failed reads came back as zeros); a signed URL's credentials are not
recorded in ``stats.zarr`` nor shown in messages, and a retry with the URL signed anew is the same
scene (skipped when done). Unreadable URLs (404, a server without range requests, no server) get a
message naming the URL, the problem and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from flows._runtime import is_io_error
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.raster.probe import probe_raster
from pipeline.raster.run import segment_raster
from pipeline.urls import public_url
from tests.raster.test_raster_skip_done import _Exploding
from tests.raster.test_raster_stats_contents import _scene, _spec_file

TIME = "2024-06-01T01:00:00"
SIGNED = "?st=2024-06-01T00%3A00%3A00Z&se=2024-06-02T00%3A00%3A00Z&sp=rl&sv=2021-06-08&sr=c&sig=c2VjcmV0LW9uZQ%3D%3D"
SIGNED_AGAIN = "?st=2024-06-01T00%3A30%3A00Z&se=2024-06-02T00%3A30%3A00Z&sp=rl&sv=2021-06-08&sr=c&sig=c2VjcmV0LXR3bw%3D%3D"


@pytest.fixture
def serve(tmp_path):
    """``serve(*options)`` -> the base URL of a real HTTP server on 127.0.0.1 over ``tmp_path / "www"``
    (its own process: see ``range_server.py``)."""
    root = tmp_path / "www"
    root.mkdir()
    servers = []

    def start(*options: str) -> str:
        args = [sys.executable, str(Path(__file__).with_name("range_server.py")), str(root), *options]
        server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        servers.append(server)
        return f"http://127.0.0.1:{int(server.stdout.readline())}"

    start.root = root
    yield start
    for server in servers:
        server.kill()
        server.wait()


def _big_scene(path):
    """2048 x 2048, tiled: the ingest reads it in several windows of 512 (several requests)."""
    rng = np.random.default_rng(3)
    with rasterio.open(path, "w", driver="GTiff", width=2048, height=2048, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 6000000), tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(rng.integers(1, 200, size=(3, 2048, 2048), dtype=np.uint8))
    return path


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.crs, src.transform


def test_a_remote_scene_gives_the_labels_of_the_local_file_and_records_no_signature(tmp_path, serve):
    base = serve()
    spec = _spec_file(tmp_path / "model")
    local = _scene(serve.root / "tile.tif")
    here = segment_raster(local, spec, tmp_path / "local", time=TIME, device="cpu")
    remote = segment_raster(f"{base}/tile.tif{SIGNED}", spec, tmp_path / "remote", time=TIME, device="cpu")

    assert remote.labels_path.name == "tile.labels.tif"  # the stem ignores the query string
    labels, crs, transform = _read(remote.labels_path)
    local_labels, local_crs, local_transform = _read(here.labels_path)
    assert (labels == local_labels).all() and crs == local_crs and transform == local_transform
    with rasterio.open(local) as src:
        assert crs == src.crs and transform == src.transform
    with xr.open_zarr(tmp_path / "remote" / "stats.zarr") as ds, xr.open_zarr(tmp_path / "local" / "stats.zarr") as ref:
        assert ds["area_m2"].values.tolist() == ref["area_m2"].values.tolist()
        source = str(ds["source"].values.item())
    assert source == f"{base}/tile.tif?st=REDACTED&se=REDACTED&sp=REDACTED&sv=REDACTED&sr=REDACTED&sig=REDACTED"
    assert probe_raster(f"{base}/tile.tif{SIGNED}").path == source  # the name segpipe's messages and logs use

    # the nightly retry gets a freshly signed URL: the same scene, done already
    again = segment_raster(f"{base}/tile.tif{SIGNED_AGAIN}", spec, tmp_path / "remote", time=TIME, device="cpu", model=_Exploding())
    assert again.skipped


def test_unreadable_urls_name_the_url_the_problem_and_the_fix_without_the_signature(tmp_path, serve, capsys):
    base = serve()
    plain = serve("--no-range")
    spec = _spec_file(tmp_path / "model")
    _big_scene(serve.root / "big.tif")

    with pytest.raises(InputError) as missing:
        segment_raster(f"{base}/nothere.tif{SIGNED}", spec, tmp_path / "out", time=TIME, device="cpu")
    message = str(missing.value)
    assert message.startswith(f"{base}/nothere.tif?st=REDACTED") and "404" in message and "check the URL" in message
    assert "c2VjcmV0" not in message
    assert not is_io_error(missing.value)  # a 404 stays a 404: not retried

    with pytest.raises(InputError, match="range requests.*download the file"):
        segment_raster(f"{plain}/big.tif", spec, tmp_path / "out", time=TIME, device="cpu")

    # the command line: exit 1, one line per failed scene, no secret anywhere in what it prints
    code = main(["raster", f"{base}/gone.tif{SIGNED}", f"http://127.0.0.1:9/tile.tif{SIGNED}", "--model", str(spec), "--out", str(tmp_path / "cli")])
    printed = capsys.readouterr()
    assert code == 1
    assert "c2VjcmV0" not in printed.out + printed.err
    assert "2 scene(s) failed" in printed.err and "could not be reached" in printed.err.replace("\n", " ")
    assert not (tmp_path / "cli").exists()  # nothing was made: no empty output folder left behind


def test_a_server_failing_mid_read_fails_the_scene_and_a_short_outage_is_retried(tmp_path, serve, monkeypatch):
    """With GDAL reading a window's tiles on several threads, failed range requests came back as a
    window of zeros: the scene was segmented as class 0 and its statistics recorded as done."""
    spec = _spec_file(tmp_path / "model")
    _big_scene(serve.root / "big.tif")
    local = segment_raster(serve.root / "big.tif", spec, tmp_path / "local", time=TIME, device="cpu", block=512)

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")  # the server goes away for good after the header
    down = serve("--fail-after", "4")
    with pytest.raises(InputError, match="read failed at rows .*server stopped answering part-way") as outage:
        segment_raster(f"{down}/big.tif", spec, tmp_path / "down", time=TIME, device="cpu", block=512)
    assert is_io_error(outage.value)  # the landcover flow retries it (10 s, then 60 s later), as other I/O errors
    assert not (tmp_path / "down" / "big.labels.tif").exists() and not (tmp_path / "down" / "stats.zarr").exists()

    monkeypatch.delenv("GDAL_HTTP_MAX_RETRY")  # segpipe's default: 3 retries of a 429/5xx
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    blip = serve("--fail-after", "4", "--fail-for", "2")
    result = segment_raster(f"{blip}/big.tif", spec, tmp_path / "blip", time=TIME, device="cpu", block=512)
    assert (_read(result.labels_path)[0] == _read(local.labels_path)[0]).all()


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("/data/scene.tif", "/data/scene.tif"),
        ("https://example.org/a/b.tif?version=3", "https://example.org/a/b.tif?version=3"),
        ("https://bucket.s3.amazonaws.com/b.tif?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&versionId=7",
         "https://bucket.s3.amazonaws.com/b.tif?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&versionId=7"),
        ("/vsicurl/https://user:pw@host/x.tif", "/vsicurl/https://user:REDACTED@host/x.tif"),
        ("s3://bucket/key.tif", "s3://bucket/key.tif"),
        ("scene https://h/x.tif?token=t1 failed: see https://h/y.tif?sig=s2", "scene https://h/x.tif?token=REDACTED failed: see https://h/y.tif?sig=REDACTED"),
    ],
)
def test_public_url_keeps_what_names_the_object_and_blanks_credentials(given, shown):
    assert public_url(given) == shown
