"""Helpers for tests and benchmarks: tiny checkpoints, generated images, a real uvicorn process."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from backend.settings import SHIPPED_DEFAULT_ID, Settings
from trainer.checkpoint import export_backbone_safetensors
from trainer.vit import DinoViT, build_vit

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_vit(seed: int = 0, patch_size: int = 8, embed_dim: int = 64, depth: int = 2) -> DinoViT:
    """A small random ViT whose heads follow the dim/64 rule, so inferred archs match."""
    torch.manual_seed(seed)
    return build_vit(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=max(embed_dim // 64, 1))


def write_tiny_checkpoint(folder: Path, name: str = "tiny", seed: int = 0, patch_size: int = 8,
                          embed_dim: int = 64) -> tuple[Path, DinoViT]:
    """A tiny safetensors checkpoint (format d) in ``folder``; returns its path and the model."""
    model = tiny_vit(seed, patch_size, embed_dim).eval()
    path = Path(folder) / f"{name}.safetensors"
    export_backbone_safetensors(model, path, arch=f"vit_d{embed_dim}", epoch=3)
    return path, model


SHIPPED_SUMMARY = "ViT-Ti/16 stand-in for the shipped model, pretrained with DINO on nothing (tests only)"


def write_shipped_checkpoint(folder: Path, summary: str | None = SHIPPED_SUMMARY) -> Path:
    """A stand-in for the shipped model: a small ``vit_tiny`` fp16 export named ``dino_vits16_duts``."""
    torch.manual_seed(7)
    model = build_vit("vit_tiny", 16).eval()
    path = Path(folder) / f"{SHIPPED_DEFAULT_ID}.safetensors"
    extra = {} if summary is None else {"summary": summary, "dataset": "none"}
    export_backbone_safetensors(model, path, arch="vit_tiny", epoch=1, extra=extra, dtype=torch.float16)
    return path


def isolated_settings(tmp: Path, **overrides: object) -> Settings:
    """Settings for an isolated service: tmp checkpoint and cache dirs, downloads off."""
    ckpt, cache = Path(tmp) / "checkpoints", Path(tmp) / "cache"
    ckpt.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    base: dict[str, object] = {"checkpoint_dir": ckpt, "cache_dir": cache, "allow_downloads": False,
                               "device": "cpu", "max_concurrency": 2, "queue_timeout_s": 30.0}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG", mode: str = "RGB", seed: int = 0,
                **save_args: object) -> bytes:
    """A smooth random image encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def uvicorn_process(env: dict[str, str], timeout_s: float = 90.0) -> Iterator[str]:
    """Start ``uvicorn backend.main:app`` on a free loopback port; yield its base URL; kill it after."""
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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


def zero_png(width: int, height: int) -> bytes:
    """A highly compressible PNG: few bytes, many pixels (a decompression-bomb stand-in)."""
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bad_input_cases(max_upload_bytes: int, max_pixels: int) -> list[tuple[str, dict, int]]:
    """(name, httpx ``post`` kwargs for /attention, expected status) for every bad input of the spec."""
    good = image_bytes(64, 48)
    corrupt = bytearray(good)
    corrupt[60:200] = bytes(140)
    side = int(max_pixels ** 0.5) + 16
    big = image_bytes(int((max_upload_bytes / 3) ** 0.5) + 64, int((max_upload_bytes / 3) ** 0.5) + 64)
    one = {"files": {"image": ("a.png", good, "image/png")}}
    return [
        ("not an image", {"files": {"image": ("a.png", b"hello, not an image", "image/png")}}, 415),
        ("truncated", {"files": {"image": ("a.png", good[: len(good) // 2], "image/png")}}, 400),
        ("corrupt", {"files": {"image": ("a.png", bytes(corrupt), "image/png")}}, 400),
        ("empty", {"files": {"image": ("a.png", b"", "image/png")}}, 400),
        ("over upload limit", {"files": {"image": ("a.png", big, "image/png")}}, 413),
        ("decompression bomb", {"files": {"image": ("a.png", zero_png(side, side), "image/png")}}, 413),
        ("image_size below a patch", {**one, "data": {"image_size": "4"}}, 400),
        ("unknown model", {**one, "data": {"model": "no_such_model"}}, 404),
        ("threshold 0", {**one, "data": {"threshold": "0"}}, 422),
        ("threshold 1.5", {**one, "data": {"threshold": "1.5"}}, 422),
        ("threshold nan", {**one, "data": {"threshold": "nan"}}, 422),
        ("image_size 0", {**one, "data": {"image_size": "0"}}, 422),
        ("image_size 99999", {**one, "data": {"image_size": "99999"}}, 422),
        ("bad resize", {**one, "data": {"resize": "stretch"}}, 422),
        ("unknown field", {**one, "data": {"thresold": "0.5"}}, 422),
        ("gt_mask size mismatch", {"files": {"image": ("a.png", good, "image/png"),
                                             "gt_mask": ("m.png", zero_png(30, 60), "image/png")}}, 400),
        ("missing image", {"data": {"threshold": "0.5"}, "files": {"other": ("x", b"1", "text/plain")}}, 422),
        ("bad base64", {"json": {"image": "!!!not base64!!!"}}, 400),
        ("json not object", {"json": [1, 2]}, 422),
        ("bad content type", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415),
    ]
