"""A real ``prefect server`` on 127.0.0.1 for the deploy tests that need the server's own services.

``prefect_test_harness`` (tests/flows/conftest.py) runs the API in-process without the scheduler
loop's production timing; these tests start ``prefect server start`` as a subprocess, with SQLite
and ``PREFECT_HOME`` in a temporary folder, in its own process group (stopped even on failure).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_exe() -> str:
    """The ``prefect`` executable of the interpreter running the tests (the project's venv)."""
    candidate = Path(sys.executable).with_name("prefect")
    found = str(candidate) if candidate.is_file() else shutil.which("prefect")
    if not found:
        pytest.skip("the prefect command is not installed next to this Python")
    return found


def get_json(url: str, body: dict | None = None) -> dict | list | bool:
    """GET ``url`` (or POST ``body`` as JSON) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class RealServer:
    """A running ``prefect server`` and the environment that points the CLI at it."""

    api: str
    env: dict[str, str]
    logs: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, args: list[str], cwd: Path = REPO) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(args, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def cli(self, *args: str, timeout: float = 120, cwd: Path = REPO) -> str:
        """Run ``prefect ARGS`` against this server; fail with its output when it exits non-zero."""
        done = subprocess.run([prefect_exe(), *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def get(self, path: str, body: dict | None = None) -> dict | list | bool:
        """GET ``<api><path>`` (or POST ``body``) and decode the JSON answer."""
        return get_json(f"{self.api}{path}", body)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_healthy(server: RealServer, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited with {proc.returncode}:\n{server.log('server')[-4000:]}")
        try:
            if get_json(f"{server.api}/health") is True:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"prefect server not healthy after {timeout:.0f} s")


def start_real_server(folder: Path, **settings: str) -> RealServer:
    """Start ``prefect server start`` on a free port with ``PREFECT_HOME`` and SQLite under ``folder``.

    ``settings`` are extra environment variables (e.g. a shorter scheduler loop) for the server and
    every CLI call made through the returned :class:`RealServer`.
    """
    home, logs = folder / "prefect-home", folder / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_CLI_WRAP_LINES="false",
        COLUMNS="200",
        **settings,
    )
    server = RealServer(api=api, env=env, logs=logs)
    port = api.rsplit(":", 1)[1].split("/")[0]
    proc = server.start("server", [prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port", port])
    try:
        _wait_healthy(server, proc)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def real_server_factory(tmp_path_factory) -> Iterator:
    """``real_server_factory(**env) -> RealServer``: servers started here are stopped after the module."""
    started: list[RealServer] = []

    def make(**settings: str) -> RealServer:
        server = start_real_server(tmp_path_factory.mktemp("prefect-server"), **settings)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
