"""Identical requests in flight are coalesced; decodes are bounded."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from backend.analysis.single_flight import SingleFlight
from backend.main import create_app
from tests.service_helpers import drawn_scene, isolated_settings, png_bytes, write_tiny_checkpoint


def test_sixteen_identical_requests_run_the_model_once(tmp_path):
    s = isolated_settings(tmp_path, default_model="tiny", max_concurrency=1, queue_timeout_s=0.2)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    png = png_bytes(drawn_scene(96, 64))
    with TestClient(create_app(s)) as c:
        step = c.app.state.service.step
        real_run, runs, gate = step.run, [], threading.Event()

        def slow_run(*args, **kwargs):
            runs.append(1)
            gate.wait(5)  # every other request arrives while the first one computes
            return real_run(*args, **kwargs)

        step.run = slow_run
        statuses, cached = [], []

        def one() -> None:
            r = c.post(
                "/attention",
                files={"image": ("a.png", png, "image/png")},
                data={"overlays": "false", "image_size": "64"},
            )
            statuses.append(r.status_code)
            cached.append(r.json().get("cached"))

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        threading.Timer(0.5, gate.set).start()
        for t in threads:
            t.join()
    assert statuses == [200] * 16 and len(runs) == 1
    assert sorted(cached) == [False] + [True] * 15
    assert len(c.app.state.service.single_flight) == 0  # no lock left behind


def test_single_flight_serialises_one_key_only():
    flight, order = SingleFlight(), []
    with flight.hold("a"):
        t = threading.Thread(target=lambda: (flight.hold("b").__enter__(), order.append("b")))
        t.start()
        t.join(2)  # another key is not blocked
        order.append("a")
    assert order == ["b", "a"]


def test_decodes_beyond_the_limit_get_503(tmp_path):
    s = isolated_settings(
        tmp_path, default_model="tiny", max_concurrent_decodes=1, queue_timeout_s=0.05
    )
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        with c.app.state.service.decode_slot():  # another request is decoding
            r = c.post("/attention", files={"image": ("a.png", png_bytes(drawn_scene(64, 48)))})
        assert r.status_code == 503 and r.json()["code"] == "busy"
        assert "decoders are busy" in r.json()["detail"]


def test_a_body_is_read_no_further_than_its_images_can_need(tmp_path):
    """DINO_MAX_REQUEST_MB is 100, images 0.05 MB: a 1 MB JSON body stops at the image bound."""
    from backend.main import FORM_ROOM, body_limits

    s = isolated_settings(tmp_path, default_model="tiny", max_upload_mb=0.05, max_request_mb=100)
    limits = body_limits(s)
    image = -(-s.max_upload_bytes * 4 // 3)
    assert limits["/attention"] == (2 * image + FORM_ROOM, "DINO_MAX_UPLOAD_MB")
    assert limits["/attention/batch"][0] == s.max_batch * image + FORM_ROOM
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        body = b'{"image": "' + b"A" * (limits["/attention"][0] + 10) + b'"}'
        r = c.post("/attention", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "request_too_large"
        assert "DINO_MAX_UPLOAD_MB" in r.json()["detail"]
        chunks = iter([body[:1000], body[1000:]])  # no Content-Length: counted as it arrives
        r = c.post("/attention", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413


@pytest.mark.slow
def test_a_slow_body_is_refused_with_408(tmp_path):
    """A real server: headers and part of a body, then silence; 408 within the deadline."""
    import json
    import socket
    import time
    from urllib.parse import urlparse

    from benchmarks.serving import uvicorn_process

    write_tiny_checkpoint(tmp_path, "tiny")
    env = {
        "DINO_CHECKPOINT_DIR": str(tmp_path),
        "DINO_CACHE_DIR": str(tmp_path / "cache"),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEVICE": "cpu",
        "DINO_BODY_TIMEOUT_S": "0.5",
    }
    with uvicorn_process(env) as url:
        u = urlparse(url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
            head = (
                "POST /attention HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"image": "AAAA')
            t0 = time.perf_counter()
            reply = sock.recv(65536)
            waited = time.perf_counter() - t0
            while not reply.rstrip().endswith(b"}") and (chunk := sock.recv(65536)):
                reply += chunk  # the body may come in a second packet
    status_line, _, rest = reply.decode().partition("\r\n")
    assert " 408 " in status_line and waited < 5
    body = json.loads(rest.split("\r\n\r\n", 1)[1])
    assert body["code"] == "body_timeout"


def test_a_wrong_method_says_which_to_use(tmp_path):
    s = isolated_settings(tmp_path, default_model="tiny")
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        r = c.get("/attention")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["detail"] == "GET is not allowed on /attention; use POST"


def test_the_server_runs_with_read_timeouts_and_trusts_no_proxy_by_default(monkeypatch):
    import backend.__main__ as entry

    seen = {}
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kw: seen.update(kw))
    entry.main()
    assert seen["timeout_keep_alive"] == 5.0 and seen["proxy_headers"] is False
    assert seen["forwarded_allow_ips"] == ""
