"""Remote inputs as they may be shown and recorded: without the credentials a URL can carry.

Signed URLs put their credentials in the query string (Microsoft Planetary Computer and Azure SAS
tokens ``?st=...&se=...&sig=...``, AWS S3 presigned ``X-Amz-Signature``, Google Cloud Storage
``X-Goog-Signature``) or in the user-info part (``https://user:password@host/...``). Such a URL is
re-signed for every run, so recording it as given would both keep a secret in ``stats.zarr`` and the
logs, and make each night's source look different from the last. :func:`public_url` keeps what names
the object (scheme, host, path, the other query parameters) and blanks the rest.

Written here rather than taken from a library: the standard library's ``urllib.parse`` splits and
joins the URL; no maintained package keeps a list of the cloud providers' signing parameters.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"

# Query parameters that carry credentials or a signature's validity, compared case-insensitively.
_SECRET_PARAMS = frozenset(
    name.lower()
    for name in (
        # Azure SAS tokens (Planetary Computer signs its COG links with these)
        "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "si", "sip", "skoid", "sktid", "skt", "ske", "sks", "skv", "sdd", "ses",
        # AWS S3 presigned URLs (signature versions 4 and 2)
        "AWSAccessKeyId", "Signature", "Expires",
        # Google Cloud Storage signed URLs (v2)
        "GoogleAccessId",
        # generic tokens and keys
        "token", "access_token", "api_key", "apikey", "key", "code", "password", "auth", "sas",
    )
)
_SECRET_PREFIXES = ("x-amz-", "x-goog-")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def is_secret_param(name: str) -> bool:
    """Whether the query parameter ``name`` carries a credential (see the module docstring)."""
    lowered = name.lower()
    return lowered in _SECRET_PARAMS or lowered.startswith(_SECRET_PREFIXES)


def public_url(text: str | Path) -> str:
    """``text`` with the credentials of every URL in it replaced by ``REDACTED`` (anything else unchanged).

    A password in the user-info part and the values of the signing query parameters are replaced;
    the parameter names stay, so the URL still shows it was signed. Local paths pass unchanged.
    ``/vsicurl/https://...`` and other GDAL virtual paths are handled like the URL inside them.
    """
    text = str(text)
    if "://" not in text:
        return text
    return _URL.sub(lambda match: _public(match.group(0)), text)


def _public(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unparsable URL (e.g. a bad IPv6 host): shown with its query dropped, to be safe
        return url.split("?", 1)[0]
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_param(name) for name, _ in pairs):
            query = urlencode([(name, REDACTED if is_secret_param(name) else value) for name, value in pairs], safe="/:,")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
