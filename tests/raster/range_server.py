"""A static HTTP file server for the remote-scene tests, run in its own process (``python range_server.py
ROOT [--no-range | --fail-after N [--fail-for M]] [--no-validators] [--no-head] [--auth USER:PASSWORD] [--require-header 'NAME: VALUE'] [--log FILE]``;
prints its port): rasterio holds the GIL while
GDAL fetches a URL, so a server thread in the test's own process would never answer. With ranges it answers ``Range: bytes=a-b``
with ``206 Partial Content``, as S3, GCS and Azure do, and sends an object's version with every answer as they do (``ETag``
and ``Last-Modified``; ``--no-validators``: neither); ``--no-head`` refuses ``HEAD`` with 403, as a URL presigned for ``GET``
only does; ``--no-range`` is Python's plain file server, which sends the whole file; ``--fail-after N`` answers 503 to every
request after the first N reads of a range past byte 0 (GDAL's tile reads; its header read, HEADs and sidecar probes are not
counted), to M of them with ``--fail-for M``. Every request is logged as a line ``METHOD PATH RANGE`` to the file
named by ``--log FILE``; with ``--auth`` a request without that HTTP basic authentication is answered 401, and with
``--require-header`` one without that header and value (e.g. ``Authorization: Bearer TOKEN``, ``X-Api-Key: K``) too."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import os
import re
import sys


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    fail_after = 0  # > 0: the requests after this many tile reads answer 503 (a server going away mid-read) ...
    fail_for = 0  # ... this many of them (a short outage), or all of them when 0
    served = 0

    validators = True  # send ETag and Last-Modified
    head = True  # answer HEAD (False: 403, as a URL presigned for GET only)
    log_file = None
    auth = None  # "Basic <base64 user:password>" every request must carry
    required = None  # (name, value): a header every request must carry

    def send_head(self):
        if self.log_file:
            with open(self.log_file, "a", encoding="utf-8") as log:
                log.write(f"{self.command} {self.path} {self.headers.get('Range', '')}\n")
        # counted: the reads of an image's tiles (GDAL's header read starts at byte 0; HEADs and sidecar probes are not counted)
        RangeHandler.served += bool(re.fullmatch(r"bytes=[1-9]\d*-\d*", self.headers.get("Range", "")))
        failing = self.fail_after and RangeHandler.served > self.fail_after
        if failing and (not self.fail_for or RangeHandler.served <= self.fail_after + self.fail_for):
            self.send_error(503, "Service Unavailable")
            return None
        if self.auth and self.headers.get("Authorization") != self.auth:
            self.send_error(401, "Unauthorized")
            return None
        if self.required and self.headers.get(self.required[0]) != self.required[1]:
            self.send_error(401, "Unauthorized")
            return None
        if self.command == "HEAD" and not self.head:
            self.send_error(403, "Forbidden (signed for GET)")
            return None
        path = self.translate_path(self.path.split("?", 1)[0])
        if not os.path.isfile(path):
            return super().send_head()
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start, end = (int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)) if match else (0, size - 1)
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "image/tiff")
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if self.validators:  # as object stores send them: the object's version
            self.send_header("ETag", f'"{size:x}-{stat.st_mtime_ns:x}"')
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args):  # quiet
        pass


class PlainHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    handler = PlainHandler if "--no-range" in sys.argv else RangeHandler
    if "--fail-after" in sys.argv:
        RangeHandler.fail_after = int(sys.argv[sys.argv.index("--fail-after") + 1])
    if "--fail-for" in sys.argv:
        RangeHandler.fail_for = int(sys.argv[sys.argv.index("--fail-for") + 1])
    RangeHandler.validators = "--no-validators" not in sys.argv
    RangeHandler.head = "--no-head" not in sys.argv
    if "--require-header" in sys.argv:
        name, _, value = sys.argv[sys.argv.index("--require-header") + 1].partition(":")
        RangeHandler.required = (name.strip(), value.strip())
    if "--auth" in sys.argv:
        RangeHandler.auth = "Basic " + base64.b64encode(sys.argv[sys.argv.index("--auth") + 1].encode()).decode()
    if "--log" in sys.argv:
        RangeHandler.log_file = sys.argv[sys.argv.index("--log") + 1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
