"""A static HTTP file server for the remote-scene tests, run in its own process (``python range_server.py
ROOT [--no-range | --fail-after N [--fail-for M]]``; prints its port): rasterio holds the GIL while GDAL fetches a URL, so a server
thread in the test's own process would never answer. With ranges it answers ``Range: bytes=a-b`` with
``206 Partial Content``, as S3, GCS and Azure do; ``--no-range`` is Python's plain file server, which
sends the whole file; ``--fail-after N`` answers 503 to every request after the first N (to M of them with ``--fail-for M``)."""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import sys


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    fail_after = 0  # > 0: the requests after this many answer 503 (a server going away mid-read) ...
    fail_for = 0  # ... this many of them (a short outage), or all of them when 0
    served = 0

    def send_head(self):
        RangeHandler.served += 1
        failing = self.fail_after and RangeHandler.served > self.fail_after
        if failing and (not self.fail_for or RangeHandler.served <= self.fail_after + self.fail_for):
            self.send_error(503, "Service Unavailable")
            return None
        path = self.translate_path(self.path.split("?", 1)[0])
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start, end = int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
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
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
