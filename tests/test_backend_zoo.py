"""Zoo downloads against a local HTTP server on 127.0.0.1: atomic, verified, 503 when impossible."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from fastapi.testclient import TestClient

from backend.analysis.service import AttentionService
from backend.errors import ModelUnavailable
from backend.main import create_app
from backend.models.registry import ModelRegistry
from backend.models.zoo import ZOO, fetch
from tests.service_helpers import free_port, image_bytes, isolated_settings, write_tiny_checkpoint
from trainer.model.vit import build_vit


def _official_like_payload() -> bytes:
    torch.manual_seed(0)
    model = build_vit(patch_size=16, embed_dim=384, depth=1, num_heads=6)  # a one-block "ViT-S/16"
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


class _Server:
    """Serves ``payload`` at any path; ``mode`` = ok | truncate | garbage | missing."""

    def __init__(self) -> None:
        self.payload = _official_like_payload()
        self.mode = "ok"
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server naming
                outer.hits.append(self.path)
                if outer.mode == "missing":
                    self.send_error(404)
                    return
                body = b"x" * len(outer.payload) if outer.mode == "garbage" else outer.payload
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if outer.mode == "truncate" else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dino"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    yield srv
    srv.httpd.shutdown()


def _files(folder):
    """The files (not folders such as the video jobs' ``jobs/``) directly in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_download_once_atomically_then_serve(server, tmp_path):
    server.mode, server.hits[:] = "ok", []
    settings = isolated_settings(
        tmp_path, allow_downloads=True, download_base_url=server.url, default_model="dino_vits16"
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json() == {"ready": True, "default_model": "dino_vits16"}
        assert server.hits == ["/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"]
        assert _files(settings.cache_dir) == ["dino_deitsmall16_pretrain.pth"]  # no temp file left
        r = client.post(
            "/attention",
            files={"image": ("a.png", image_bytes(40, 40), "image/png")},
            data={"image_size": "32", "overlays": "false"},
        )
        assert (
            r.status_code == 200
            and r.json()["model"] == "dino_vits16"
            and r.json()["num_heads"] == 6
        )
    ModelRegistry(settings).get("dino_vits16")  # cached: no second download
    assert len(server.hits) == 1


@pytest.mark.parametrize("mode", ["truncate", "garbage", "missing"])
def test_failed_download_leaves_no_file_and_is_503(server, tmp_path, mode):
    server.mode = mode
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable) as info:
        fetch("dino_vits8", cache, server.url, allow=True, timeout_s=5)
    assert info.value.status == 503 and "could not download dino_vits8" in info.value.detail
    assert list(cache.iterdir()) == []
    if mode == "truncate":
        assert "truncated" in info.value.detail or "got" in info.value.detail


def test_wrong_architecture_is_rejected(server, tmp_path):
    server.mode = "ok"  # the payload is a ViT-S/16, but dino_vitb8 promises a ViT-B/8
    with pytest.raises(ModelUnavailable, match="expected vit_base/8"):
        fetch("dino_vitb8", tmp_path, server.url, allow=True)
    assert list(tmp_path.iterdir()) == []


def test_downloads_off_gives_503_through_the_api(tmp_path):
    settings = isolated_settings(tmp_path, allow_downloads=False)
    write_tiny_checkpoint(settings.checkpoint_dir)
    with TestClient(create_app(settings)) as client:
        models = {m["id"]: m for m in client.get("/models").json()["models"]}
        assert not models["dino_vitb16"]["available"]
        r = client.post(
            "/attention",
            files={"image": ("a.png", image_bytes(), "image/png")},
            data={"model": "dino_vitb16"},
        )
        assert r.status_code == 503 and r.json()["code"] == "downloads_disabled"
        assert "DINO_ALLOW_DOWNLOADS" in r.json()["detail"]


def test_offline_startup_falls_back_quickly(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/dino"  # nothing listens there
    settings = isolated_settings(
        tmp_path, allow_downloads=True, download_base_url=dead, download_timeout_s=2
    )
    write_tiny_checkpoint(settings.checkpoint_dir, "local")
    service = AttentionService(settings)
    start = time.monotonic()
    service.start()
    assert time.monotonic() - start < 10 and service.default_model == "local" and service.ready
    assert "could not download" in service.registry.resolve("dino_vits16").error


def test_zoo_urls_are_the_authors():
    urls = {k: v.url("https://dl.fbaipublicfiles.com/dino") for k, v in ZOO.items()}
    assert urls["dino_vits16"] == (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain.pth"
    )
    assert urls["dino_vitb8"].endswith("/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth")
