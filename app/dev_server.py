"""``python -m app.dev_server`` (what ``make run`` calls): the service and the web app,
together, on loopback.

Starts ``python -m backend`` on 127.0.0.1:8000 and ``python -m app`` on 127.0.0.1:7860 as child
processes, waits until the service answers ``/readyz`` and the page answers, prints both addresses,
and stops both cleanly on Ctrl-C / SIGTERM, or when either of them exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

import httpx

STOP_GRACE_S = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.dev_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address both servers listen on")
    parser.add_argument("--backend-port", type=int, default=8000)
    parser.add_argument("--app-port", type=int, default=7860)
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the default model (a first run may download it)",
    )
    return parser.parse_args(argv)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_children(host: str, backend_port: int, app_port: int) -> dict[str, subprocess.Popen]:
    """Both servers in their own sessions, so Ctrl-C reaches only this process, which then stops
    them."""
    backend_env = {**os.environ, "DINO_HOST": host, "DINO_PORT": str(backend_port)}
    app_env = {
        **os.environ,
        "BACKEND_URL": f"http://{host}:{backend_port}",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    backend = subprocess.Popen(
        [sys.executable, "-m", "backend"], env=backend_env, start_new_session=True
    )
    app = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", host, "--port", str(app_port)],
        env=app_env,
        start_new_session=True,
    )
    return {"service": backend, "web app": app}


def stop_children(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each (app first), wait up to STOP_GRACE_S, then SIGKILL what is left."""
    for proc in reversed(children.values()):
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for name, proc in reversed(children.items()):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop within {STOP_GRACE_S:.0f} s; killing it", flush=True)
            proc.kill()
            proc.wait()


def _answers(url: str) -> tuple[bool, str]:
    try:
        response = httpx.get(url, timeout=2.0)
    except httpx.HTTPError as exc:
        return False, f"not answering yet ({type(exc).__name__})"
    if response.status_code == 200:
        return True, "ready"
    try:
        return False, str(response.json().get("detail", response.status_code))
    except ValueError:
        return False, f"HTTP {response.status_code}"


def wait_until_ready(
    children: dict[str, subprocess.Popen],
    urls: dict[str, str],
    timeout: float,
    stopping: Callable[[], bool],
) -> str | None:
    """None once every url answers 200; else why not (a child exited, timeout, or stop
    requested)."""
    deadline = time.monotonic() + timeout
    last_note = 0.0
    pending = dict(urls)
    while pending:
        for name, proc in children.items():
            if proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode} before it was ready"
        if stopping():
            return "stopped"
        for name, url in list(pending.items()):
            ok, why = _answers(url)
            if ok:
                del pending[name]
            elif time.monotonic() - last_note > 15:
                print(f"waiting for the {name} ({url}): {why}", flush=True)
                last_note = time.monotonic()
        if time.monotonic() > deadline:
            return f"not ready within {timeout:.0f} s: {', '.join(pending)}"
        time.sleep(0.5)
    return None


def _install_stop_handlers() -> Callable[[], bool]:
    flag = {"stop": False}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        flag["stop"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return lambda: flag["stop"]


def _ports_free(args: argparse.Namespace) -> bool:
    """Whether both ports are free; else say which one is taken and how to pick another."""
    for name, port in (("service", args.backend_port), ("web app", args.app_port)):
        if port_in_use(args.host, port):
            print(
                f"port {port} on {args.host} is already in use (wanted for the {name}); "
                "stop what uses it "
                f"or pass --{'backend' if name == 'service' else 'app'}-port",
                file=sys.stderr,
            )
            return False
    return True


def run(args: argparse.Namespace) -> int:
    if not _ports_free(args):
        return 2
    stopping = _install_stop_handlers()
    children = start_children(args.host, args.backend_port, args.app_port)
    backend_url = f"http://{args.host}:{args.backend_port}"
    app_url = f"http://{args.host}:{args.app_port}"
    try:
        problem = wait_until_ready(
            children,
            {"service": f"{backend_url}/readyz", "web app": app_url},
            args.ready_timeout,
            stopping,
        )
        if problem == "stopped":
            return 0
        if problem:
            print(f"could not start: {problem}", file=sys.stderr)
            return 1
        print(
            f"\nattention service: {backend_url}  (API docs {backend_url}/docs)\n"
            f"web app:           {app_url}\nPress Ctrl-C to stop both.\n",
            flush=True,
        )
        while not stopping():
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(
                        f"the {name} exited with code {proc.returncode}; stopping", file=sys.stderr
                    )
                    return proc.returncode or 1
            time.sleep(0.5)
        return 0
    finally:
        stop_children(children)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
