"""``python -m app.dev_server`` (``make run``): both servers up and printed, stopped on a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app_stack import MODEL_IDS, free_port, write_tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """stdout lines until one contains ``marker`` (or the process ends / time runs out)."""
    seen, deadline = [], time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
        else:
            time.sleep(0.1)
    raise AssertionError(f"no {marker!r} within {timeout} s; output so far:\n{''.join(seen)}")


def test_starts_both_prints_addresses_and_stops_both_on_sigterm(tmp_path):
    write_tiny_checkpoints(tmp_path / "checkpoints")
    backend_port, app_port = free_port(), free_port()
    env = {
        **os.environ,
        "DINO_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "DINO_CACHE_DIR": str(tmp_path / "c"),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEFAULT_MODEL": MODEL_IDS[-1],
        "DINO_DEVICE": "cpu",
        "DINO_APP_EXAMPLES_DIR": str(tmp_path / "examples"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.dev_server",
            "--backend-port",
            str(backend_port),
            "--app-port",
            str(app_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = _read_until(proc, "Press Ctrl-C", timeout=120)
        assert f"attention service: http://127.0.0.1:{backend_port}" in out
        assert f"web app:           http://127.0.0.1:{app_port}" in out
        assert (
            httpx.get(f"http://127.0.0.1:{backend_port}/readyz").json()["default_model"]
            == MODEL_IDS[-1]
        )
        assert httpx.get(f"http://127.0.0.1:{app_port}/").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not _listening(backend_port) and not _listening(app_port)


def test_a_busy_port_is_reported_before_anything_starts():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.dev_server",
                "--backend-port",
                str(busy),
                "--app-port",
                str(free_port()),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"port {busy} on 127.0.0.1 is already in use (wanted for the service)" in done.stderr
