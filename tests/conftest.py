"""Fixtures for every test folder."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Child processes the tests start (spawned multiprocessing workers, Dask LocalCluster worker processes,
# `python -c` children) import `tests.*` helpers and `pipeline`: pytest puts the repository root on
# sys.path of this process only, so it goes on PYTHONPATH for them (CI runs without one).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # multiprocessing's spawn gives its children this process's sys.path, not PYTHONPATH's
    sys.path.insert(0, _REPO_ROOT)
if _REPO_ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)


@contextlib.contextmanager
def _mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True, timeout=30)


@pytest.fixture
def tmpfs():
    """``with tmpfs(folder, "ro,size=1m") as folder:`` a real small file system mounted at ``folder``
    (full and read-only output folders); skips where mounting is not allowed (not root, containers)."""
    return _mounted_tmpfs


@contextlib.contextmanager
def _file_size_limit(nbytes: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def file_size_limit():
    """``with file_size_limit(nbytes):`` ``ulimit -f`` for this process (Python ignores SIGXFSZ, so a
    write past it fails with EFBIG, as on FAT32 past 4 GB)."""
    return _file_size_limit


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One ``segpipe demo --device cpu`` per test session (about 10-15 s on 2 cores), shared by
    ``tests/demo/test_demo_run.py`` and ``tests/test_docs.py``: ``(exit code, output folder, DemoResult)``.

    The output folder is ``<tmp>/segpipe-demo``, named as ``make demo``'s, so the README's snippets
    run from its parent as written. Read only: a test that changes the outputs makes its own run.
    """
    import pipeline.demo.command as command
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("demo") / "segpipe-demo"
    captured = []
    real = command.run_demo

    def spy(*args, **kwargs):
        captured.append(real(*args, **kwargs))
        return captured[-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(command, "run_demo", spy)
    try:
        code = main(["demo", "--out", str(out), "--device", "cpu"])
    finally:
        mp.undo()
    return code, out, captured[0] if captured else None
