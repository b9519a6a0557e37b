"""GDAL's HTTP settings (``GDAL_HTTP_*``) as headers and a proxy for a request made outside GDAL
(:mod:`pipeline.raster.object_version` asks a URL's ``ETag`` with ``urllib``).

A server that wants a header, a bearer token or a user and password gets them from GDAL's
configuration options; without them here the version request was refused (401/403), the scene had
"no version" and its work store was never reused. Read, as GDAL reads them, from the options set by
``rasterio.Env`` (thread-local or global) and else from the environment
(``rasterio.env.get_gdal_config``):

- ``GDAL_HTTP_HEADERS``: headers separated by ``\\r\\n``, or by commas (a value holding a comma is
  double-quoted, with ``\\"`` and ``\\\\`` escaped), e.g. ``X-Api-Key: k,X-Tenant: acme``.
- ``GDAL_HTTP_HEADER_FILE``: a file of ``Name: value`` lines (read when the headers are asked).
- ``GDAL_HTTP_USERPWD`` (``user:password``): basic authentication when ``GDAL_HTTP_AUTH`` is unset,
  ``BASIC``, ``ANY`` or ``ANYSAFE`` (``NTLM`` and ``NEGOTIATE`` are libcurl's handshakes: not sent).
- ``GDAL_HTTP_BEARER``: ``Authorization: Bearer <token>`` when ``GDAL_HTTP_AUTH`` is unset or ``BEARER``.
- ``GDAL_HTTP_PROXY`` (``host:port``), ``GDAL_HTTPS_PROXY`` for https URLs, ``GDAL_HTTP_PROXYUSERPWD``.

Explicit headers win over the authentication options, as in GDAL (libcurl sends a header set by
hand instead of the one it would make). The values are secrets: never logged, never in a message;
only the names of the options used are.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from urllib.parse import quote

__all__ = ["gdal_http_headers", "gdal_proxy"]

log = logging.getLogger(__name__)

_BASIC = {"", "BASIC", "ANY", "ANYSAFE"}


def gdal_setting(name: str) -> str | None:
    """GDAL configuration option ``name`` as GDAL sees it now (``rasterio.Env``, else the environment); None when unset or empty."""
    from rasterio.env import get_gdal_config

    value = get_gdal_config(name, normalize=False)
    return None if value in (None, "") else str(value)


def gdal_http_headers() -> dict[str, str]:
    """The HTTP headers GDAL's settings add to its requests (names as given; later ones replace earlier ones)."""
    headers: dict[str, str] = {}
    auth = (gdal_setting("GDAL_HTTP_AUTH") or "").upper()
    userpwd = gdal_setting("GDAL_HTTP_USERPWD")
    if userpwd and auth in _BASIC:
        headers["Authorization"] = "Basic " + base64.b64encode(userpwd.encode()).decode()
    bearer = gdal_setting("GDAL_HTTP_BEARER")
    if bearer and auth in ("", "BEARER"):
        headers["Authorization"] = f"Bearer {bearer}"
    header_file = gdal_setting("GDAL_HTTP_HEADER_FILE")
    if header_file:
        try:
            text = Path(header_file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("GDAL_HTTP_HEADER_FILE cannot be read (%s); the version request goes without its headers", type(exc).__name__)
        else:
            headers.update(_header_lines(text.splitlines()))
    given = gdal_setting("GDAL_HTTP_HEADERS")
    if given:
        headers.update(_header_lines(given.split("\r\n") if "\r\n" in given else _split_commas(given)))
    return headers


def gdal_proxy(scheme: str) -> str | None:
    """The proxy URL GDAL's settings name for a ``scheme`` (``http``/``https``) request, None for none."""
    proxy = (gdal_setting("GDAL_HTTPS_PROXY") if scheme == "https" else None) or gdal_setting("GDAL_HTTP_PROXY")
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    userpwd = gdal_setting("GDAL_HTTP_PROXYUSERPWD")
    if userpwd and "@" not in proxy.split("://", 1)[1]:
        user, _, password = userpwd.partition(":")
        scheme_part, rest = proxy.split("://", 1)
        proxy = f"{scheme_part}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
    return proxy


def _header_lines(lines) -> dict[str, str]:
    """``Name: value`` lines as a dict; lines without a colon are skipped."""
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers


def _split_commas(text: str) -> list[str]:
    """GDAL_HTTP_HEADERS split at commas outside double quotes; a quoted value loses its quotes and escapes."""
    items, current, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if quoted and char == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    items.append("".join(current))
    return items
