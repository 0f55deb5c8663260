"""One-batch start-up self-checks of the device-only training paths, each against its CPU twin.

The paths (nvjpeg decoding and the device multi-crop of ``--gpu_augment``, fused AdamW,
``--compile`` with inductor) are the ones a CPU-only test run never exercises. Before the run
is built, each enabled path runs once on a tiny synthetic batch:

- decoding: a generated JPEG decoded on the device must match PIL's decode within
  :data:`PIXEL_TOLERANCE` (mean absolute difference, uint8 levels);
- multi-crop: every view must have its crop's shape and finite values;
- fused AdamW: one step must match the unfused step within :data:`STEP_TOLERANCE`;
- compile: a compiled MLP must match its eager twin within :data:`STEP_TOLERANCE`.

A check that fails or raises logs a warning and the run falls back to the tested path: the
CPU multi-crop in the loader workers, the foreach AdamW, eager execution.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainer.train.flags import TrainConfig

logger = logging.getLogger(__name__)
PIXEL_TOLERANCE = 3.0  # mean |device - PIL| in uint8 levels; JPEG decoders round differently
STEP_TOLERANCE = 1e-5
Check = Callable[[TrainConfig, torch.device], None]


class SelfCheckFailed(RuntimeError):
    """A device path gave a result its CPU twin does not."""


@dataclass(frozen=True)
class EnabledPaths:
    """Which device-only paths the run may use after the self-checks."""

    gpu_augment: bool
    fused_optimizer: bool
    compile: bool


def _test_jpeg(width: int = 48, height: int = 40) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def device_decode(blob: bytes, device: torch.device) -> torch.Tensor:
    """The device decoder the ``--gpu_augment`` path uses (nvjpeg on CUDA), uint8 (3, H, W)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def check_decode(cfg: TrainConfig, device: torch.device) -> None:
    """The device decode of a generated JPEG matches PIL's within :data:`PIXEL_TOLERANCE`."""
    from trainer.data.jpeg_batch import decode_with_pil

    blob = _test_jpeg()
    reference = decode_with_pil(blob)
    decoded = device_decode(blob, device).cpu()
    if reference is None or decoded.shape != reference.shape:
        got = tuple(decoded.shape)
        raise SelfCheckFailed(f"decoded shape {got}, PIL gives {tuple(reference.shape)}")
    diff = (decoded.float() - reference.float()).abs().mean().item()
    if diff > PIXEL_TOLERANCE:
        raise SelfCheckFailed(f"decoded pixels differ from PIL's by {diff:.1f} levels on average")


def check_multicrop(cfg: TrainConfig, device: torch.device) -> None:
    """The device multi-crop of two odd-sized images gives finite views of the crop shapes."""
    from trainer.train.build import build_gpu_multicrop

    multicrop = build_gpu_multicrop(cfg, device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = [
        torch.randint(0, 256, (3, 37, 45), dtype=torch.uint8, generator=generator, device=device),
        torch.randint(0, 256, (3, 29, 23), dtype=torch.uint8, generator=generator, device=device),
    ]
    views = multicrop(images, generator=generator)
    sizes = [cfg.global_crops_size] * 2 + [cfg.local_crops_size] * cfg.local_crops_number
    if len(views) != len(sizes):
        raise SelfCheckFailed(f"{len(views)} views instead of {len(sizes)}")
    for index, (view, size) in enumerate(zip(views, sizes, strict=True)):
        if tuple(view.shape) != (2, 3, size, size):
            raise SelfCheckFailed(f"view {index} has shape {tuple(view.shape)}, not (2, 3, {size})")
        if not torch.isfinite(view).all():
            raise SelfCheckFailed(f"view {index} holds NaN or infinite values")


def _adamw_step(device: torch.device, fused: bool) -> torch.Tensor:
    start = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    weight = nn.Parameter(start.to(device))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.04, fused=fused or None)
    (weight.square().sum()).backward()
    optimizer.step()
    return weight.detach().cpu()


def check_fused_adamw(cfg: TrainConfig, device: torch.device) -> None:
    """One fused AdamW step equals one unfused step."""
    diff = (_adamw_step(device, True) - _adamw_step(device, False)).abs().max().item()
    if diff > STEP_TOLERANCE:
        raise SelfCheckFailed(f"the fused step differs from the unfused one by {diff:.2e}")


def check_compile(cfg: TrainConfig, device: torch.device) -> None:
    """An inductor-compiled MLP gives its eager twin's output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16)).to(device)
        x = torch.randn(4, 8).to(device)
    compiled = torch.compile(model, backend="inductor", dynamic=False)
    with torch.no_grad():
        diff = (compiled(x) - model(x)).abs().max().item()
    if diff > STEP_TOLERANCE:
        raise SelfCheckFailed(f"compiled output differs from eager by {diff:.2e}")


CHECKS: dict[str, Check] = {
    "decode": check_decode,
    "multicrop": check_multicrop,
    "fused_adamw": check_fused_adamw,
    "compile": check_compile,
}
FALLBACKS = {
    "decode": "decoding and crops in the loader workers (CPU)",
    "multicrop": "crops in the loader workers (CPU)",
    "fused_adamw": "the foreach AdamW",
    "compile": "eager execution",
}


def _passes(name: str, cfg: TrainConfig, device: torch.device) -> bool:
    try:
        CHECKS[name](cfg, device)
    except Exception as exc:  # noqa: BLE001 - any failure of a device path means: fall back
        logger.warning(
            "self-check %s failed on %s (%s: %s); using %s instead",
            name,
            device,
            type(exc).__name__,
            exc,
            FALLBACKS[name],
        )
        return False
    logger.info("self-check %s passed on %s", name, device)
    return True


def run_self_checks(
    cfg: TrainConfig, device: torch.device, gpu_augment: bool, fused_optimizer: bool = True
) -> EnabledPaths:
    """Check each enabled device path once; the paths the run may use.

    Decoding is checked only on CUDA (elsewhere PIL decodes, the tested path); fused AdamW only
    with ``--optimizer adamw``; compile only with ``--compile``.
    """
    if gpu_augment:
        decoding_ok = device.type != "cuda" or _passes("decode", cfg, device)
        gpu_augment = decoding_ok and _passes("multicrop", cfg, device)
    if fused_optimizer and cfg.optimizer == "adamw":
        fused_optimizer = _passes("fused_adamw", cfg, device)
    compile_ok = cfg.compile and _passes("compile", cfg, device)
    return EnabledPaths(gpu_augment, fused_optimizer, bool(compile_ok))
