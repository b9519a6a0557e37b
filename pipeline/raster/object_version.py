"""The server-side version of a remote scene: what tells a killed run's work store, or a finished
statistics entry, from one made of an object that has since been replaced at the same URL.

A local file's version is its size and modification time; an HTTP(S) object's is its ``ETag`` (else
its ``Last-Modified``) and its ``Content-Length``, asked with one small request: a ``HEAD``, or, where
the server refuses ``HEAD`` (S3, GCS and Azure URLs presigned for ``GET`` only answer it 403), a
``GET`` of one byte (``Range: bytes=0-0``). The request uses the URL as given, credentials included
(user:password is sent as HTTP basic authentication, as curl does), with the headers, bearer token,
user and password and proxy of GDAL's HTTP settings (``GDAL_HTTP_HEADERS``, ``GDAL_HTTP_HEADER_FILE``,
``GDAL_HTTP_USERPWD``, ``GDAL_HTTP_BEARER``, ``GDAL_HTTP_PROXY``...: :mod:`pipeline.raster.gdal_http`),
so a server that GDAL reads with them answers this request too; nothing returned or logged here
holds them.

Why not GDAL: GDAL's ``/vsicurl/`` has the headers (``VSIGetFileMetadata(path, "HEADERS")``) but
rasterio 1.4 does not wrap that function, and the GDAL Python bindings are not a dependency; the
standard library's ``urllib`` asks instead (with a timeout; GDAL's proxy when one is set, else the
``http(s)_proxy`` variables).

Not asked: local paths (their size and modification time are read instead), and the other remote
forms GDAL reads (``s3://``, ``gs://``, ``/vsis3/``, ``/vsiaz/``, ``/vsizip/...``, ``/vsicurl?url=``):
asking them would need the cloud SDKs' credentials; their work stores are reused, and their entries
taken as done, on the path alone, as before.
"""

from __future__ import annotations

import base64
import http.client
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pipeline.raster.gdal_http import gdal_http_headers, gdal_proxy
from pipeline.urls import public_url

__all__ = ["ObjectVersion", "object_version"]

log = logging.getLogger(__name__)

Validator = Literal["etag", "last-modified", "none", "not asked"]
TIMEOUT_S = 10.0
# refusals of HEAD that a one-byte GET may pass: forbidden (signed for GET only), method not allowed, not implemented
_HEAD_REFUSED = frozenset({400, 403, 405, 501})
_VSICURL = "/vsicurl/"
_warned: set[str] = set()  # public URLs whose missing version was logged (once per process)


@dataclass(frozen=True)
class ObjectVersion:
    """What the server says of an object's version.

    Attributes:
        validator: ``etag`` or ``last-modified`` (the header the version is taken from); ``none``:
            the server sent neither (or could not be asked: ``reason``), so no earlier work can be
            proven to be of this object; ``not asked``: a local path or a scheme that is not asked
            (see the module docstring).
        value: the ``ETag`` (quotes and ``W/`` kept) or ``Last-Modified`` header as sent; ``""`` otherwise.
        length: the object's size in bytes (``Content-Length``, or the total of a ``Content-Range``), None when not sent.
        reason: why the validator is ``none`` (for the log), ``""`` otherwise.
    """

    validator: Validator
    value: str = ""
    length: int | None = None
    reason: str = ""

    @property
    def known(self) -> bool:
        """True when the version comes from the server (``etag`` or ``last-modified``)."""
        return self.validator in ("etag", "last-modified")

    @property
    def reusable(self) -> bool:
        """Whether work made earlier from this input may be reused: a known version, or one not asked (as before)."""
        return self.validator != "none"

    def stamp(self) -> list[str | int | None]:
        """``[validator, value, length]``: what the ingest signature and the input fingerprint record (no credentials)."""
        return [self.validator, self.value, self.length]

    def text(self) -> str:
        """The version in words, e.g. ``ETag "abc", 1234 bytes``."""
        name = {"etag": "ETag", "last-modified": "Last-Modified"}.get(self.validator, self.validator)
        size = "" if self.length is None else f", {self.length} bytes"
        return f"{name} {self.value}{size}" if self.known else name


NOT_ASKED = ObjectVersion("not asked")


def object_version(path_or_url: str | Path, *, timeout: float = TIMEOUT_S) -> ObjectVersion:
    """The server's version of ``path_or_url`` (one ``HEAD``, or a one-byte ``GET`` where ``HEAD`` is refused).

    Args:
        path_or_url: the input as GDAL is given it: a local path, ``http(s)://...``, ``/vsicurl/http(s)://...``.
        timeout: seconds to wait for the server's answer.

    Returns:
        ``not asked`` for a local path or another scheme (module docstring); ``etag``/``last-modified``
        with the header's value and the size; ``none`` when the server sends neither validator or
        does not answer (logged once per URL and process: the input is taken as changed, never as the same).
    """
    url = http_url(path_or_url)
    if url is None:
        return NOT_ASKED
    try:
        headers = _ask(url, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # HTTP errors, timeouts, refused connections
        return _unversioned(url, f"the version request failed ({_why(exc)})")
    length = _length(headers)
    if headers.get("ETag"):
        return ObjectVersion("etag", headers["ETag"].strip(), length)
    if headers.get("Last-Modified"):
        return ObjectVersion("last-modified", headers["Last-Modified"].strip(), length)
    return _unversioned(url, "the server sends no ETag or Last-Modified")


def http_url(path_or_url: str | Path) -> str | None:
    """The ``http(s)://`` URL that ``path_or_url`` reads (``/vsicurl/`` prefix removed), None for anything else."""
    text = str(path_or_url)
    if text.startswith(_VSICURL):
        text = text[len(_VSICURL):]
    return text if re.match(r"https?://", text, flags=re.IGNORECASE) else None


def _ask(url: str, timeout: float) -> Message:
    """The response headers of a ``HEAD`` of ``url``, or of a one-byte ``GET`` where ``HEAD`` is refused."""
    plain, auth = _split_credentials(url)
    auth.update(gdal_http_headers())  # GDAL's settings, as GDAL sends them (an explicit header wins)
    proxy = gdal_proxy(urlsplit(plain).scheme.lower())
    open_url = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy})).open if proxy else urllib.request.urlopen
    try:
        with open_url(_request(plain, auth, "HEAD"), timeout=timeout) as response:
            return response.headers
    except urllib.error.HTTPError as exc:
        if exc.code not in _HEAD_REFUSED:
            raise
        exc.close()
    # closed unread: of a server ignoring Range, no more than the socket's buffer is received
    with open_url(_request(plain, auth, "GET"), timeout=timeout) as response:
        return response.headers


def _request(url: str, auth: dict[str, str], method: str) -> urllib.request.Request:
    """A ``HEAD``, or a ``GET`` of the first byte; credentials are not sent on to a redirect's host."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"}, method=method)
    if method == "GET":
        request.add_header("Range", "bytes=0-0")
    for name, value in auth.items():
        request.add_unredirected_header(name, value)
    return request


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` and the basic ``Authorization`` header they make (urllib does not send them)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, host = parts.netloc.rsplit("@", 1)
    token = base64.b64encode(unquote(userinfo).encode()).decode()
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), {"Authorization": f"Basic {token}"}


def _length(headers: Message) -> int | None:
    """The object's size: the total of a ``Content-Range: bytes 0-0/SIZE``, else ``Content-Length``."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", (headers.get("Content-Range") or "").strip())
    if match:
        return int(match.group(1))
    if headers.get("Content-Range"):  # a 206 whose total is "*" (unknown): its Content-Length is the part's
        return None
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    return public_url(f"{type(reason).__name__}: {reason}")


def _unversioned(url: str, reason: str) -> ObjectVersion:
    shown = public_url(url)
    if shown not in _warned:
        _warned.add(shown)
        log.warning(
            "%s: %s; without a version a killed run's work store and a finished entry cannot be told from a replaced object's, "
            "so they are not reused (the scene is read and segmented again)", shown, reason,
        )
    return ObjectVersion("none", reason=reason)
