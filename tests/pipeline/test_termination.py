"""SIGTERM as Ctrl-C for the command line only (``pipeline/termination.py``): the handler raises a
KeyboardInterrupt in the main thread, ignores a second SIGTERM while the cleanup runs, and is put
back when ``main`` returns; importing segpipe (library, CLI, flows) installs nothing, so a Prefect
flow run keeps Prefect's own SIGTERM handler (its cancellation ends a run as Cancelled). The runs
stopped by SIGTERM are in tests/raster/test_raster_sigterm.py and tests/volume/test_volume_sigterm.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pipeline.cli import main
from pipeline.termination import Terminated, sigterm_as_interrupt

REPO = Path(__file__).resolve().parents[2]

CLEANUP = """
import os, signal, sys, time
from pipeline.termination import Terminated, sigterm_as_interrupt
steps = []
try:
    with sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            steps.append("not interrupted")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM: the cleanup goes on
            steps.append("cleaned up")
except Terminated as exc:
    steps.append(f"Terminated, a KeyboardInterrupt: {isinstance(exc, KeyboardInterrupt)}")
steps.append(f"handler back: {signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}")
print("; ".join(steps))
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)


def test_sigterm_raises_in_the_main_thread_and_a_second_one_does_not_stop_the_cleanup():
    done = _python(CLEANUP)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cleaned up; Terminated, a KeyboardInterrupt: True; handler back: True"


def test_importing_segpipe_installs_no_signal_handler():
    imports = "import pipeline.cli, pipeline.raster.run, pipeline.volume.run, pipeline.volume.batch, flows.landcover, flows.volumes"
    done = _python(f"import signal; {imports}; print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "True" and "default_int_handler" in done.stdout


def test_only_the_command_line_sets_signal_handlers():
    """Library and flow code never replaces a handler (a flow run's SIGTERM is Prefect's: capture_sigterm)."""
    setters = re.compile(r"\bsignal\.signal\(|\bsignal\.set_wakeup_fd\(|\bsigterm_as_interrupt\(")
    found = sorted(
        str(path.relative_to(REPO)) for folder in ("pipeline", "flows", "models") for path in (REPO / folder).rglob("*.py") if setters.search(path.read_text())
    )
    assert found == ["pipeline/cli.py", "pipeline/termination.py"]


def test_main_puts_the_previous_handler_back(capsys):
    def mine(signum, frame):
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main([]) == 2  # no subcommand: the help
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "usage: segpipe" in capsys.readouterr().out


def test_outside_the_main_thread_nothing_is_installed():
    seen = []

    def run():
        with sigterm_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before] and issubclass(Terminated, KeyboardInterrupt)
