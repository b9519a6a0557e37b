"""Run ``segpipe`` (``pipeline.cli.main``) in this process, sending it SIGTERM at a chosen event:
``python tests/sigterm_child.py MODULE:FUNCTION before|after|never SEGPIPE_ARGS...``.

The function is wrapped so that its first call sends SIGTERM to this process just before or just
after it runs (``never``: not at all, for an external ``kill``): a real signal, delivered by the
kernel and handled by segpipe's own handler, at a point a test can name (a temporary output
written, not yet renamed) instead of a moment it has to guess. A test helper, not a test module."""

from __future__ import annotations

import importlib
import os
import signal
import sys


def _hook(target: str, when: str) -> None:
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, name)
    fired = []

    def hooked(*args, **kwargs):
        if when == "before" and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        result = real(*args, **kwargs)
        if when == "after" and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    setattr(module, name, hooked)


if __name__ == "__main__":
    target, when, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if when != "never":
        _hook(target, when)
    from pipeline.cli import main

    sys.exit(main(argv))
