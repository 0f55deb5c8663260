"""The one device and precision resolver shared by the trainer, the service and the benchmarks."""

from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK with a visible GPU, else cpu; ``cuda`` without one: an error."""
    if preference not in DEVICE_CHOICES:
        raise ValueError(
            f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was asked for but no CUDA GPU is visible; choose cpu or auto"
        )
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device`` (always usable on CPU; CUDA from Ampere on)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def resolve_precision(
    requested: str, device_type: str, bf16_ok: bool, use_fp16: bool | None = None
) -> str:
    """The effective precision: an explicit one, else the legacy ``use_fp16`` flag, else auto.

    Auto is bf16 (or fp16 where bf16 is slow) on CUDA and fp32 elsewhere.
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(
            f"unknown precision {requested!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if requested != "auto":
        return requested
    if use_fp16 is not None:
        return "fp16" if use_fp16 and device_type == "cuda" else "fp32"
    if device_type == "cuda":
        return "bf16" if bf16_ok else "fp16"
    return "fp32"


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``precision`` (bf16|fp16) on ``device``, or nothing for fp32."""
    if precision not in AUTOCAST_DTYPES:
        choices = ", ".join(AUTOCAST_DTYPES)
        raise ValueError(f"unknown precision {precision!r}; choose one of {choices}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
