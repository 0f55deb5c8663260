"""The service under churn and rude clients: a checkpoint vanishing during a scan is skipped,
and a client that disconnects while sending its body is logged at info, without a traceback."""

from __future__ import annotations

import logging
import os
import threading

import anyio
from fastapi.testclient import TestClient

import backend.models.registry as registry_mod
from backend.main import create_app
from backend.models.registry import ModelRegistry
from tests.service_helpers import image_bytes, isolated_settings, write_tiny_checkpoint


def test_a_file_vanishing_during_the_scan_is_skipped(tmp_path, monkeypatch):
    s = isolated_settings(tmp_path)
    for name in ("a", "b", "c"):
        write_tiny_checkpoint(s.checkpoint_dir, name)
    real = registry_mod.weights_stat

    def vanishing(path):
        if path.stem == "b":  # listed by iterdir, gone when stat'ed
            os.unlink(path)
        return real(path)

    monkeypatch.setattr(registry_mod, "weights_stat", vanishing)
    ids = [e.id for e in ModelRegistry(s).entries() if e.source == "file"]
    assert ids == ["a", "c"]


def test_models_and_attention_stay_up_while_files_come_and_go(tmp_path):
    s = isolated_settings(tmp_path, default_model="tiny")
    good, _ = write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    data, stop = good.read_bytes(), threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            path = s.checkpoint_dir / f"churn{i % 3}.safetensors"
            path.write_bytes(data[: len(data) // (1 + i % 2)])  # whole or half-written
            path.unlink()
            i += 1

    worker = threading.Thread(target=churn, daemon=True)
    png = {"image": ("a.png", image_bytes(32, 32), "image/png")}
    codes = []
    with TestClient(create_app(s)) as client:
        worker.start()
        try:
            for _ in range(40):
                codes.append(client.get("/models").status_code)
                r = client.post("/attention", files=png, data={"image_size": "32"})
                codes.append(r.status_code)
        finally:
            stop.set()
            worker.join()
    assert set(codes) == {200}, codes


def test_a_client_disconnect_is_logged_at_info_without_traceback(tmp_path, caplog):
    s = isolated_settings(tmp_path, default_model="tiny")
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    app = create_app(s)
    sent: list[dict] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/attention",
        "raw_path": b"/attention",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"host", b"x")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    messages = iter([{"type": "http.request", "body": b"--xyz\r\n", "more_body": True}])

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    with TestClient(app), caplog.at_level(logging.INFO):
        anyio.run(app, scope, receive, send)
    disconnects = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert disconnects and all(r.levelno == logging.INFO for r in disconnects)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
