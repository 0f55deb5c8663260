"""Helpers for the tests: settings of an isolated service, the shipped-model stand-in,
generated images and the list of bad inputs. The uvicorn process and tiny checkpoints live in
``benchmarks.serving``, which the latency benchmark shares."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from backend.settings import SHIPPED_DEFAULT_ID, Settings
from benchmarks.serving import free_port, tiny_vit, uvicorn_process, write_tiny_checkpoint
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit

__all__ = ["free_port", "tiny_vit", "uvicorn_process", "write_tiny_checkpoint"]


SHIPPED_SUMMARY = (
    "ViT-Ti/16 stand-in for the shipped model, pretrained with DINO on nothing (tests only)"
)


def write_shipped_checkpoint(folder: Path, summary: str | None = SHIPPED_SUMMARY) -> Path:
    """A stand-in for the shipped model: a small fp16 ``vit_tiny`` named ``dino_vits16_duts``."""
    torch.manual_seed(7)
    model = build_vit("vit_tiny", 16).eval()
    path = Path(folder) / f"{SHIPPED_DEFAULT_ID}.safetensors"
    extra = {} if summary is None else {"summary": summary, "dataset": "none"}
    export_backbone_safetensors(
        model, path, arch="vit_tiny", epoch=1, extra=extra, dtype=torch.float16
    )
    return path


def isolated_settings(tmp: Path, **overrides: object) -> Settings:
    """Settings for an isolated service: tmp checkpoint and cache dirs, downloads off."""
    ckpt, cache = Path(tmp) / "checkpoints", Path(tmp) / "cache"
    ckpt.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    base: dict[str, object] = {
        "checkpoint_dir": ckpt,
        "cache_dir": cache,
        "allow_downloads": False,
        "device": "cpu",
        "max_concurrency": 2,
        "queue_timeout_s": 30.0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def image_bytes(
    width: int = 64,
    height: int = 48,
    fmt: str = "PNG",
    mode: str = "RGB",
    seed: int = 0,
    **save_args: object,
) -> bytes:
    """A smooth random image encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def check_no_server_error(operation: Any, examples: int, seen: list[int] | None = None) -> None:
    """Call a schemathesis ``operation`` with ``examples`` cases drawn from its OpenAPI schema
    (derandomised) and fail on any 5xx; each status code is appended to ``seen``."""
    from hypothesis import HealthCheck, given, settings

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call()
        if seen is not None:
            seen.append(response.status_code)
        assert response.status_code < 500, response.text

    run()


def drawn_scene(width: int, height: int) -> Image.Image:
    """A blue picture with a yellow ellipse and a red rectangle (objects for the heads to find)."""
    img = Image.new("RGB", (width, height), (40, 90, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((width * 0.2, height * 0.3, width * 0.6, height * 0.8), fill=(230, 200, 30))
    draw.rectangle((width * 0.65, height * 0.1, width * 0.9, height * 0.4), fill=(200, 30, 40))
    return img


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def zero_png(width: int, height: int) -> bytes:
    """A highly compressible PNG: few bytes, many pixels (a decompression-bomb stand-in)."""
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bad_input_cases(max_upload_bytes: int, max_pixels: int) -> list[tuple[str, dict, int]]:
    """(name, httpx ``post`` kwargs for /attention, expected status) per bad input of the spec."""
    good = image_bytes(64, 48)
    corrupt = bytearray(good)
    corrupt[60:200] = bytes(140)
    side = int(max_pixels**0.5) + 16
    big_side = int((max_upload_bytes / 3) ** 0.5) + 64
    big = image_bytes(big_side, big_side)
    one = {"files": {"image": ("a.png", good, "image/png")}}
    return [
        ("not an image", {"files": {"image": ("a.png", b"hello, not an image", "image/png")}}, 415),
        ("truncated", {"files": {"image": ("a.png", good[: len(good) // 2], "image/png")}}, 400),
        ("corrupt", {"files": {"image": ("a.png", bytes(corrupt), "image/png")}}, 400),
        ("empty", {"files": {"image": ("a.png", b"", "image/png")}}, 400),
        ("over upload limit", {"files": {"image": ("a.png", big, "image/png")}}, 413),
        (
            "decompression bomb",
            {"files": {"image": ("a.png", zero_png(side, side), "image/png")}},
            413,
        ),
        ("image_size below a patch", {**one, "data": {"image_size": "4"}}, 400),
        ("unknown model", {**one, "data": {"model": "no_such_model"}}, 404),
        ("threshold 0", {**one, "data": {"threshold": "0"}}, 422),
        ("threshold 1.5", {**one, "data": {"threshold": "1.5"}}, 422),
        ("threshold nan", {**one, "data": {"threshold": "nan"}}, 422),
        ("image_size 0", {**one, "data": {"image_size": "0"}}, 422),
        ("image_size 99999", {**one, "data": {"image_size": "99999"}}, 422),
        ("bad resize", {**one, "data": {"resize": "stretch"}}, 422),
        ("unknown field", {**one, "data": {"thresold": "0.5"}}, 422),
        (
            "gt_mask size mismatch",
            {
                "files": {
                    "image": ("a.png", good, "image/png"),
                    "gt_mask": ("m.png", zero_png(30, 60), "image/png"),
                }
            },
            400,
        ),
        (
            "missing image",
            {"data": {"threshold": "0.5"}, "files": {"other": ("x", b"1", "text/plain")}},
            422,
        ),
        ("bad base64", {"json": {"image": "!!!not base64!!!"}}, 400),
        ("json not object", {"json": [1, 2]}, 422),
        ("bad content type", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415),
    ]
