"""Text files segpipe reads and writes (model specs, catalogs, regions, sidecars, class-name .aux.xml)
are UTF-8 whatever the machine's locale: with Python's locale encoding a spec naming a class
'Wald–Süd' failed to load on a machine whose locale is not UTF-8 (Windows' cp1252, a POSIX locale
without coercion), and names were written in the locale's encoding under an XML header saying UTF-8."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import yaml
from affine import Affine

REPO = Path(__file__).resolve().parents[2]
TEXT_CALLS = {"read_text", "write_text"}


def _unspecified_encodings(path: Path) -> list[str]:
    """``file:line`` of every text-mode read_text/write_text/open() call in ``path`` without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in TEXT_CALLS:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
        elif isinstance(func, ast.Name) and func.id == "open":  # the builtin; rasterio.open and friends are attributes
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_text_file_is_opened_with_an_explicit_encoding():
    sources = [p for folder in ("pipeline", "models", "flows") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 50
    assert [hit for path in sources for hit in _unspecified_encodings(path)] == []


def test_the_check_finds_a_call_without_encoding(tmp_path):
    probe = REPO / "pipeline" / "_encoding_probe_tmp.py"  # inside the repo: the message names it relative to REPO
    code = "from pathlib import Path\nPath('a').read_text()\nopen('b', 'rb')\nopen('c')\nPath('d').write_text('x', encoding='utf-8')\n"
    probe.write_text(code, encoding="utf-8")
    try:
        assert _unspecified_encodings(probe) == ["pipeline/_encoding_probe_tmp.py:2", "pipeline/_encoding_probe_tmp.py:4"]
    finally:
        probe.unlink()


def test_a_spec_with_non_ascii_class_names_runs_under_an_ascii_locale(tmp_path):
    """A real ``segpipe raster`` in a process whose locale encoding is ASCII (no UTF-8 mode, no coercion)."""
    import torch
    from safetensors.torch import save_file

    names = ["Wasser", "Wald–Süd", "Äcker"]
    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    save_file(conv.state_dict(), str(tmp_path / "m.safetensors"))
    spec = {
        "name": "umlaut", "task": "raster", "architecture": "torch.nn:Conv2d",
        "params": {"in_channels": 3, "out_channels": 3, "kernel_size": 1}, "in_channels": 3,
        "classes": [{"id": i, "name": n} for i, n in enumerate(names)], "window": [32, 32], "overlap": 0.25,
        "normalize": {"kind": "none"}, "checkpoint": "m.safetensors",
    }
    (tmp_path / "umlaut.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    image = tmp_path / "scene.tif"
    with rasterio.open(image, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, size=(3, 32, 32), dtype=np.uint8))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "utf-8"}
    check = subprocess.run([sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"], env=env, capture_output=True, text=True)
    assert check.stdout.strip().lower() in ("ansi_x3.4-1968", "ascii", "us-ascii")  # the locale this test is about
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "raster", str(image), "--model", str(tmp_path / "umlaut.yaml"), "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, encoding="utf-8", cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    aux = (tmp_path / "out" / "scene.labels.tif.aux.xml").read_text(encoding="utf-8")
    assert all(name in aux for name in names)
