"""A real ``uvicorn`` process of the service and tiny checkpoints, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import DinoViT, build_vit

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_vit(seed: int = 0, patch_size: int = 8, embed_dim: int = 64, depth: int = 2) -> DinoViT:
    """A small random ViT whose heads follow the dim/64 rule, so inferred archs match."""
    torch.manual_seed(seed)
    heads = max(embed_dim // 64, 1)
    return build_vit(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=heads)


def write_tiny_checkpoint(
    folder: Path, name: str = "tiny", seed: int = 0, patch_size: int = 8, embed_dim: int = 64
) -> tuple[Path, DinoViT]:
    """A tiny safetensors checkpoint (format d) in ``folder``; returns its path and the model."""
    model = tiny_vit(seed, patch_size, embed_dim).eval()
    path = Path(folder) / f"{name}.safetensors"
    export_backbone_safetensors(model, path, arch=f"vit_d{embed_dim}", epoch=3)
    return path, model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def uvicorn_process(
    env: dict[str, str], timeout_s: float = 90.0, port: int | None = None
) -> Iterator[str]:
    """Start ``uvicorn backend.main:app`` on ``port`` (default: a free loopback port); yield its
    URL; stop it after."""
    port = port or free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "backend.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, timeout_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"uvicorn exited with {proc.returncode}: {out[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code in (200, 503):
                return
        time.sleep(0.2)
    raise TimeoutError(f"uvicorn did not answer on {url} within {timeout_s} s")
