"""The benchmark scripts still run end to end (tiny sizes) and print their tables; figures are not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_engine_bench_runs():
    out = run("engine.py", "--shape", "48", "48", "32", "--window", "32", "--rounds", "1", "--threads", "1")
    assert "engine / forward" in out and "label agreement with MONAI = 100.0000 %" in out


@pytest.mark.slow
def test_raster_scaling_bench_runs(tmp_path):
    out = run("raster_scaling.py", "--sizes", "512", "1024", "--block", "256", "--keep", str(tmp_path))
    assert "peak RSS 1024 / 512" in out and "% of io" in out


@pytest.mark.slow
def test_end_to_end_bench_runs():
    out = run("end_to_end.py", "--scene", "256", "--ct", "32", "64", "64", "--device", "cpu")
    assert "segpipe raster 256x256x4" in out and "segpipe volume (32, 64, 64)" in out


@pytest.mark.slow
def test_gpu_throughput_bench_runs_on_cpu():
    out = run("gpu_throughput.py", "--device", "cpu", "--side", "512", "--window", "128", "--block", "256", "--batch", "2")
    assert "segformer-b0" in out and "unet" in out and "busy" in out


@pytest.mark.slow
def test_landcover_throughput_bench_runs_on_cpu():
    out = run("landcover_throughput.py", "--device", "cpu", "--side", "512", "--scenes", "2", "--parallel", "2", "--model", "unet", "--block", "256")
    assert "end to end" in out and "device need" in out


@pytest.mark.slow
def test_gpu_check_runs_cpu_against_cpu():
    out = run("gpu_check.py", "--device", "cpu", "--small")
    assert "7/7 checks passed" in out and "pieces via disk" in out


def test_nodata_windows_bench_runs():
    out = run("nodata_windows.py", "--side", "1200", "1400", "--time", "256")
    assert "empty blocks" in out and "valid labels agree 100.0000%" in out


def test_stats_append_bench_runs():
    out = run("stats_append.py", "--shapes", "3x2x2x2", "5x3x2x4")
    assert "3x2x2x2" in out and "5x3x2x4" in out and "append s" in out
