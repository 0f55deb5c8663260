"""The real service and the web app on loopback, for the gradio_client and browser tests.

The service runs in a thread (uvicorn) over tiny random-weights checkpoints written here; the app
is launched with ``prevent_thread_lock``. Nothing is downloaded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

TINY = {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 8}
MODEL_IDS = ("tiny_ep0", "tiny_ep1")  # two "checkpoints of one run"; the newer one is the default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_tiny_checkpoints(folder: Path) -> None:
    """Random-init backbones, last block sharpened so heads differ visibly; marked untrained."""
    from trainer.model.checkpoint import export_backbone_safetensors
    from trainer.model.vit import build_vit

    folder.mkdir(parents=True, exist_ok=True)
    for epoch, model_id in enumerate(MODEL_IDS):
        torch.manual_seed(epoch)
        model = build_vit("vit_test", **TINY)
        with torch.no_grad():
            model.blocks[-1].attn.qkv.weight.mul_(8.0)
            model.pos_embed.mul_(4.0)
        export_backbone_safetensors(
            model, folder / f"{model_id}.safetensors", arch="vit_test", epoch=epoch, trained=False
        )
        time.sleep(0.01)  # distinct mtimes: the newest file is the service's fallback default


def scene(size: tuple[int, int] = (64, 64)) -> tuple[Image.Image, Image.Image]:
    """A photo-like test image (textured background, a bright disc) and its ground-truth mask."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    background = np.stack([40 + 30 * np.sin(xx / 5), 80 + 40 * np.cos(yy / 7), 60 + 0 * xx], -1)
    background += rng.normal(0, 8, size=(h, w, 3))
    disc = (xx - w * 0.6) ** 2 + (yy - h * 0.45) ** 2 < (min(w, h) * 0.25) ** 2
    pixels = np.where(disc[..., None], np.array([250, 210, 60]), background)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image, Image.fromarray((disc * 255).astype(np.uint8), mode="L")


@contextmanager
def running_backend(tmp: Path) -> Iterator[str]:
    """The real service over the tiny checkpoints of :func:`write_tiny_checkpoints`; yields its
    URL."""
    write_tiny_checkpoints(tmp / "checkpoints")
    with serving_checkpoints(tmp, MODEL_IDS[-1]) as url:
        yield url


@contextmanager
def serving_checkpoints(tmp: Path, default_model: str) -> Iterator[str]:
    """The real service (backend.main.create_app) over ``tmp/checkpoints``, on CPU and a free
    loopback port; yields its URL."""
    import uvicorn

    from backend.main import create_app
    from backend.settings import Settings

    settings = Settings(
        checkpoint_dir=tmp / "checkpoints",
        cache_dir=tmp / "cache",
        allow_downloads=False,
        default_model=default_model,
        device="cpu",
        max_concurrency=2,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="test-backend", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/readyz", thread)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for(url: str, thread: threading.Thread | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if thread is not None and not thread.is_alive():
            raise RuntimeError(f"the server for {url} stopped before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")


@dataclass
class LiveApp:
    url: str
    backend_url: str


@contextmanager
def running_app(backend_url: str, examples: list[Path] | None = None) -> Iterator[LiveApp]:
    """The Gradio app (``app.ui``) on a free loopback port, talking to ``backend_url``."""
    from app.client import BackendClient
    from app.ui import build_demo, launch

    client = BackendClient(backend_url, timeout=60)
    demo = build_demo(client, examples or [])
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/")
        yield LiveApp(f"http://127.0.0.1:{port}", backend_url)
    finally:
        demo.close()
        client.close()


def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """Body of a module's ``live`` fixture: the real service, and the app in front of it."""
    tmp = tmp_path_factory.mktemp("live")
    with running_backend(tmp) as backend_url, running_app(backend_url) as app:
        yield app


def live_client(live: LiveApp) -> Any:
    """Body of a module's ``client`` fixture: a ``gradio_client.Client`` of the ``live`` app."""
    from gradio_client import Client

    return Client(live.url, verbose=False)
