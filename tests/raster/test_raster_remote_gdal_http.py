"""The version request of a remote scene (``object_version``) carries GDAL's HTTP settings: a server
that wants a header (``GDAL_HTTP_HEADERS``, ``GDAL_HTTP_HEADER_FILE``), a bearer token
(``GDAL_HTTP_BEARER``) or a user and password (``GDAL_HTTP_USERPWD``) answers it with the object's
version, so the scene's work store and entry can be reused; the values never reach a log or a message.

Before: urllib asked without them, the server answered 401, the scene had "no version" and its work
was never reused. Real HTTP server in its own process (``range_server.py``), settings given as
environment variables and through ``rasterio.Env``."""

from __future__ import annotations

import logging

import rasterio

from pipeline.raster.gdal_http import _split_commas, gdal_http_headers, gdal_proxy
from pipeline.raster.object_version import object_version
from tests.raster import test_raster_remote as remote
from tests.raster.test_raster_remote_version import _write

serve = remote.serve  # the fixture: a real HTTP server in its own process (range_server.py)
GDAL_HTTP = ("GDAL_HTTP_HEADERS", "GDAL_HTTP_HEADER_FILE", "GDAL_HTTP_USERPWD", "GDAL_HTTP_BEARER", "GDAL_HTTP_AUTH",
             "GDAL_HTTP_PROXY", "GDAL_HTTPS_PROXY", "GDAL_HTTP_PROXYUSERPWD")


def _clean(monkeypatch):
    for name in GDAL_HTTP:
        monkeypatch.delenv(name, raising=False)


def test_a_header_set_with_rasterio_env_reaches_the_version_request_and_is_never_logged(tmp_path, serve, monkeypatch, caplog):
    _clean(monkeypatch)
    base = serve("--require-header", "X-Api-Key: k-s3cret")
    _write(serve.root / "tile.tif", seed=1)
    caplog.set_level(logging.DEBUG)
    refused = object_version(f"{base}/tile.tif")
    assert refused.validator == "none" and "401" in refused.reason  # as before: no header, no version
    with rasterio.Env(GDAL_HTTP_HEADERS="X-Other: 1,X-Api-Key: k-s3cret"):
        assert object_version(f"{base}/tile.tif").validator == "etag"
        with rasterio.open(f"/vsicurl/{base}/tile.tif") as src:  # GDAL reads with the same setting
            assert src.count == 3
    assert "k-s3cret" not in caplog.text


def test_a_bearer_token_and_a_user_password_from_the_environment(tmp_path, serve, monkeypatch, caplog):
    _clean(monkeypatch)
    caplog.set_level(logging.DEBUG)
    bearer = serve("--require-header", "Authorization: Bearer tok-s3cret")
    _write(serve.root / "tile.tif", seed=1)
    monkeypatch.setenv("GDAL_HTTP_BEARER", "tok-s3cret")
    version = object_version(f"{bearer}/tile.tif")
    assert version.validator == "etag" and "tok-s3cret" not in version.text()
    monkeypatch.setenv("GDAL_HTTP_AUTH", "NTLM")  # another scheme: no bearer sent
    assert object_version(f"{bearer}/tile.tif?x=1").validator == "none"
    _clean(monkeypatch)

    basic = serve("--auth", "reader:pw-s3cret")
    monkeypatch.setenv("GDAL_HTTP_USERPWD", "reader:pw-s3cret")
    assert object_version(f"{basic}/tile.tif").validator == "etag"
    monkeypatch.setenv("GDAL_HTTP_USERPWD", "reader:wrong")
    refused = object_version(f"{basic}/tile.tif?again")
    assert refused.validator == "none" and "401" in refused.reason
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text


def test_a_header_file(tmp_path, serve, monkeypatch):
    _clean(monkeypatch)
    base = serve("--require-header", "X-Api-Key: from-file")
    _write(serve.root / "tile.tif", seed=1)
    headers = tmp_path / "headers.txt"
    headers.write_text("X-Tenant: acme\nX-Api-Key: from-file\n")
    monkeypatch.setenv("GDAL_HTTP_HEADER_FILE", str(headers))
    assert object_version(f"{base}/tile.tif").validator == "etag"


def test_gdal_header_syntax_and_precedence(monkeypatch):
    _clean(monkeypatch)
    assert _split_commas('A: 1,B: "x, \\"y\\" \\\\ z",C: 3') == ["A: 1", 'B: x, "y" \\ z', "C: 3"]
    monkeypatch.setenv("GDAL_HTTP_HEADERS", "X-A: 1\r\nX-B: 2, with comma")  # CRLF-separated: commas are text
    monkeypatch.setenv("GDAL_HTTP_BEARER", "t")
    assert gdal_http_headers() == {"Authorization": "Bearer t", "X-A": "1", "X-B": "2, with comma"}
    monkeypatch.setenv("GDAL_HTTP_HEADERS", "Authorization: Custom x")  # an explicit header wins, as in GDAL
    assert gdal_http_headers() == {"Authorization": "Custom x"}
    assert gdal_proxy("https") is None
    monkeypatch.setenv("GDAL_HTTP_PROXY", "proxy:3128")
    monkeypatch.setenv("GDAL_HTTP_PROXYUSERPWD", "u:p@ss")
    assert gdal_proxy("https") == "http://u:p%40ss@proxy:3128"
