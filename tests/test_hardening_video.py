"""Video jobs under hostile use: a cancelled job stops within one batch, SIGTERM stops a busy
service within its grace, one browser session cannot take another's job slots, deleted result
files and absurd job ids get JSON errors, and no reply names a server path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from benchmarks.serving import REPO_ROOT, _wait_ready
from tests.service_helpers import (
    free_port,
    image_bytes,
    isolated_settings,
    write_tiny_checkpoint,
)
from tests.test_video_api import submit, wait
from tests.video_clips import write_clip

BATCH_S = 0.4  # the injected model's time per batch


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_clip(path, frames=24, width=64, height=48, fps=12)
    return path.read_bytes()


@pytest.fixture()
def slow(tmp_path):
    """A service whose model takes BATCH_S per batch of 2 frames; yields (client, calls)."""
    s = isolated_settings(tmp_path, video_batch=2, trusted_proxies="testclient")
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as client:
        service = client.app.state.service
        real = service.batch_cls_attention
        calls: list[float] = []

        def slow_model(*args, **kwargs):
            calls.append(time.monotonic())
            time.sleep(BATCH_S)
            return real(*args, **kwargs)

        service.batch_cls_attention = slow_model
        client.settings = s
        yield client, calls


def _job_threads(job: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith(job)]


def test_cancel_stops_the_work_within_one_batch(slow, clip):
    client, calls = slow
    job = submit(client, clip).json()["job"]
    while len(calls) < 2:
        time.sleep(0.01)
    assert len(_job_threads(job)) == 2  # its decoder and encoder
    cancelled_at = time.monotonic()
    assert client.delete(f"/jobs/{job}").json()["state"] == "cancelled"
    while _job_threads(job):
        assert time.monotonic() - cancelled_at < 2 * BATCH_S + 1.0, _job_threads(job)
        time.sleep(0.01)
    assert sum(t > cancelled_at for t in calls) == 0  # no batch started after the DELETE
    assert wait(client, job)["frames_done"] < 24
    started = time.monotonic()
    again = submit(client, clip, fps=2).json()["job"]  # the single worker is free at once
    while not calls or calls[-1] < started:
        assert time.monotonic() - started < BATCH_S + 1.5
        time.sleep(0.01)
    assert wait(client, again)["state"] == "done"


def test_each_browser_session_has_its_own_job_limit(slow, clip):
    client, _ = slow
    headers = {"alice": {"X-Dino-Client": "alice-1"}, "bob": {"X-Dino-Client": "bob_2"}}

    def post(who: dict) -> httpx.Response:
        files = {"video": ("clip.mp4", clip, "video/mp4")}
        data = {"model": "tiny", "image_size": "48"}
        return client.post("/attention/video", files=files, data=data, headers=who)

    jobs = [post(headers["alice"]) for _ in range(2)]
    assert [r.status_code for r in jobs] == [202, 202]
    assert post(headers["alice"]).status_code == 429
    bob = post(headers["bob"])
    assert bob.status_code == 202, bob.text  # alice's two jobs do not count against bob
    bare = [post({"X-Dino-Client": "x" * 65}), post({"X-Dino-Client": "bad token!"})]
    assert [r.status_code for r in bare] == [202, 202]  # invalid headers: the address counts
    assert post({}).status_code == 429  # the address has its 2 now
    for r in [*jobs, bob, *bare]:
        client.delete(f"/jobs/{r.json()['job']}")


def test_the_session_header_is_ignored_from_an_untrusted_peer(tmp_path, clip):
    s = isolated_settings(tmp_path, video_jobs_per_client=1)  # "testclient" is no proxy
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as client:
        client.app.state.service.batch_cls_attention = lambda *a, **k: time.sleep(5)
        first = submit(client, clip)
        files = {"video": ("clip.mp4", clip, "video/mp4")}
        r = client.post(
            "/attention/video",
            files=files,
            data={"model": "tiny", "image_size": "48"},
            headers={"X-Dino-Client": "someone-else"},
        )
        assert r.status_code == 429
        client.delete(f"/jobs/{first.json()['job']}")


def test_web_app_sends_its_browser_session(monkeypatch):
    from gradio.context import LocalContext

    from app import video_client

    class Request:
        session_hash = "k3x9abc0d1"

    assert video_client.session_headers() == {}
    token = LocalContext.request.set(Request())
    try:
        assert video_client.session_headers() == {"X-Dino-Client": "k3x9abc0d1"}
        Request.session_hash = "not a token"
        assert video_client.session_headers() == {}
    finally:
        LocalContext.request.reset(token)


def test_deleted_result_file_and_huge_job_id_are_json_errors(slow, clip):
    client, _ = slow
    job = submit(client, clip, fps=2).json()["job"]
    assert wait(client, job)["state"] == "done"
    folder = client.settings.cache_dir / "jobs" / job
    for name, url in (("result.npz", "result?format=npz"), ("source.mp4", "source")):
        (folder / name).unlink()
        r = client.get(f"/jobs/{job}/{url}")
        assert (r.status_code, r.json()["code"]) == (404, "result_missing"), r.text
        assert name in r.json()["detail"] and str(folder) not in r.text
    for path in (f"/jobs/{'a' * 60_000}", f"/jobs/{'a' * 60_000}/result", "/jobs/a%20b;c"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["code"] == "unknown_job", r.text
        assert len(r.text) < 400


def test_error_messages_never_name_server_paths(tmp_path, clip):
    s = isolated_settings(tmp_path)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    secret_dirs = (str(s.cache_dir), str(s.checkpoint_dir), str(tmp_path))
    with TestClient(create_app(s)) as client:
        replies = [
            submit(client, clip[: len(clip) // 3]),  # truncated: staged under the cache dir
            submit(client, b"\x00\x00\x00\x18ftypmp42" + bytes(40)),
            client.post(
                "/attention",
                files={"image": ("a.png", image_bytes(32, 32), "image/png")},
                data={"model": "dino_vits16"},
            ),  # not cached, downloads off
        ]
        replies.append(client.get("/models"))
    codes = [r.status_code for r in replies]
    assert codes == [400, 400, 503, 200], codes
    assert replies[2].json()["code"] == "downloads_disabled"
    for r in replies:
        for secret in secret_dirs:
            assert secret not in r.text, (r.request.url, r.text[:300])


def _backend_process(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "DINO_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend"],
        cwd=REPO_ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, 90)
    return proc, url


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` over a plain socket (no client-side URL limit): (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_sigterm_stops_a_busy_service_within_the_stop_grace(tmp_path):
    s = isolated_settings(tmp_path)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    write_clip(tmp_path / "long.mp4", frames=240, width=64, height=48, fps=24)
    env = {
        "DINO_CHECKPOINT_DIR": str(s.checkpoint_dir),
        "DINO_CACHE_DIR": str(s.cache_dir),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEVICE": "cpu",
        "DINO_STOP_GRACE_S": "3",
        "DINO_VIDEO_BATCH": "4",
        "DINO_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    proc, url = _backend_process(env)
    try:
        status, body = raw_get(url, f"/jobs/{'a' * 100_000}")
        assert status == 404 and json.loads(body)["code"] == "unknown_job", body[:200]
        files = {"video": ("long.mp4", (tmp_path / "long.mp4").read_bytes(), "video/mp4")}
        data = {"model": "tiny", "image_size": "320"}
        job = httpx.post(f"{url}/attention/video", files=files, data=data, timeout=30).json()["job"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/jobs/{job}").json()["frames_done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=3 + 10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 3 + 3, took  # the stop grace and a moment to exit
    again, url = _backend_process(env)  # the next start reports the job it did not finish
    try:
        body = httpx.get(f"{url}/jobs/{job}").json()
        assert body["state"] == "failed" and body["error"] == "service restarted", body
    finally:
        again.terminate()
        again.wait(timeout=15)


def test_progress_moves_per_frame_not_per_batch(tmp_path, clip, monkeypatch):
    """frames_done counts frames as they are encoded, so a batch of 8 shows 1, 2, 3, ..."""
    import backend.video.runner as runner

    real = runner.render_frame

    def slow_render(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "render_frame", slow_render)
    s = isolated_settings(tmp_path, video_batch=8)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as client:
        r = submit(client, clip, fps=12)
        assert r.status_code == 202, r.text
        job, seen = r.json()["job"], set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = client.get(f"/jobs/{job}").json()
            seen.add(body["frames_done"])
            if body["state"] not in ("queued", "running"):
                break
            time.sleep(0.01)
        assert body["state"] == "done" and body["frames_done"] == body["frames_total"]
        assert {f for f in seen if f % 8}, f"progress only in batch steps: {sorted(seen)}"
