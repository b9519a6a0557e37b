"""Fixtures for every test folder."""

from __future__ import annotations

import contextlib
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


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
