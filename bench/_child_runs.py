"""What the stats.zarr scale benchmarks share: each operation measured in a fresh child process of the script
(its own peak RSS, an address-space limit so a blow-up is a MemoryError, not a swapped machine).

``bench/stats_scale.py`` (land cover) and ``bench/volume_stats_scale.py`` (CT/MRI) run themselves with
``--child --op OP --store STORE --shape AxBx... --limit-gb G``; :func:`child_main` does the child's part.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ``ru_maxrss`` would keep the forking parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(args, build: Callable[..., None], op: Callable[..., dict]) -> None:
    """The child's part: ``build(store, *shape)`` for ``--op build``, else ``op(name, store, *shape)``; prints one JSON line
    with ``s`` (seconds, None on MemoryError), ``rss_mb`` and ``error``."""
    limit = int(args.limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    shape = tuple(int(n) for n in args.shape.split("x"))
    if args.op == "build":
        t0 = time.perf_counter()
        build(Path(args.store), *shape)
        print(json.dumps({"s": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}))
        return
    try:
        result = op(args.op, Path(args.store), *shape)
    except MemoryError:
        result = {"s": None, "error": "MemoryError"}
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def _child(script: str, what: str, store: Path, shape: str, limit_gb: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, script, "--child", "--op", what, "--store", str(store), "--shape", shape, "--limit-gb", str(limit_gb)]
    return subprocess.run(cmd, capture_output=True, text=True)


def build_store(script: str, store: Path, shape: str, limit_gb: float) -> float:
    """Build the store ``store`` of ``shape`` in a child of ``script``; its seconds."""
    out = _child(script, "build", store, shape, limit_gb)
    out.check_returncode()
    return json.loads(out.stdout.strip().splitlines()[-1])["s"]


def measure(script: str, what: str, store: Path, shape: str, limit_gb: float, *, changes_store: bool) -> dict:
    """``what`` in a fresh child of ``script``, on a copy of ``store`` when it ``changes_store``."""
    work = store
    if changes_store:
        work = store.with_name("work.zarr")
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["cp", "-a", str(store), str(work)], check=True)
    out = _child(script, what, work, shape, limit_gb)
    if work != store:
        shutil.rmtree(work, ignore_errors=True)
    if out.returncode != 0:
        return {"s": None, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:80], "rss_mb": None}
    return json.loads(out.stdout.strip().splitlines()[-1])
