"""Inference precisions of a frozen backbone: fp32, bf16 autocast and int8 dynamic quantisation.

Used by the service's model step and by the evaluations' ``--precision``. Reduced precision
applies to the matmuls only: attention softmax read-outs, thresholds and PCA are computed in
fp32 by their callers. A mode is offered only where this machine runs it natively:

* ``bf16``: CUDA GPUs that support it, or CPUs with AVX-512 BF16 or AMX;
* ``int8``: CPUs with VNNI (AVX-512 VNNI, AVX-VNNI or AMX-INT8); dynamic quantisation is a CPU
  feature, so never on CUDA.

``auto`` picks the fastest of these: bf16, else int8, else fp32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.model.device import autocast_context

INFERENCE_PRECISIONS = ("fp32", "bf16", "int8")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_precisions(device: torch.device, flags: frozenset[str] | None = None) -> list[str]:
    """The modes ``device`` runs natively, fastest last: always fp32, then int8, then bf16."""
    if device.type == "cuda":
        return ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
    flags = cpu_flags() if flags is None else flags
    modes = ["fp32"]
    if (
        any(f in flags for f in INT8_CPU_FLAGS)
        and "x86" in torch.backends.quantized.supported_engines
    ):
        modes.append("int8")
    if any(f in flags for f in BF16_CPU_FLAGS):
        modes.append("bf16")
    return modes


class UnsupportedPrecision(ValueError):
    """A precision this machine does not run natively (or an unknown one)."""


def resolve_inference_precision(
    requested: str, device: torch.device, flags: frozenset[str] | None = None
) -> str:
    """``requested`` (``auto`` resolved) when ``device`` runs it natively, else the error."""
    native = native_precisions(device, flags)
    if requested == "auto":
        return native[-1]
    if requested not in INFERENCE_PRECISIONS:
        raise UnsupportedPrecision(
            f"unknown precision {requested!r}; choose one of auto, "
            + ", ".join(INFERENCE_PRECISIONS)
        )
    if requested not in native:
        raise UnsupportedPrecision(
            f"precision {requested} does not run natively on this {device.type} (it would be "
            f"emulated, slower than fp32); this machine runs {', '.join(native)} (or auto)"
        )
    return requested


def int8_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are dynamically quantised to int8.

    Each quantised ``qkv`` keeps its float ``weight`` and ``bias`` as plain attributes, so the
    attention read-out (which projects only the query rows it needs) still finds them; the
    block forwards run the int8 kernels.
    """
    float_copy = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        quantised = quantize_dynamic(float_copy, {nn.Linear}, dtype=torch.qint8)
    for name, original in float_copy.named_modules():
        if name.endswith("attn.qkv") and isinstance(original, nn.Linear):
            module = quantised.get_submodule(name)
            bias = None if original.bias is None else original.bias.detach()
            object.__setattr__(module, "weight", original.weight.detach())
            object.__setattr__(module, "bias", bias)
    return quantised


def precision_network(
    model: nn.Module, requested: str, device: torch.device
) -> tuple[nn.Module, str, contextlib.AbstractContextManager]:
    """``(network, precision, context)`` for an evaluation in ``requested`` on ``device``: the
    model or its int8 copy, the resolved mode, and the autocast context to run it under."""
    precision = resolve_inference_precision(requested, device)
    if precision == "int8":
        return int8_copy(model), precision, contextlib.nullcontext()
    return model, precision, autocast_context(device, precision)


def command_network(
    model: nn.Module, requested: str, device: torch.device
) -> tuple[nn.Module, contextlib.AbstractContextManager]:
    """:func:`precision_network` for a command: a refused mode exits with ``--precision: why``;
    the mode that runs is logged."""
    try:
        network, precision, context = precision_network(model, requested, device)
    except UnsupportedPrecision as exc:
        raise SystemExit(f"--precision: {exc}") from exc
    logging.getLogger(__name__).info("precision %s", precision)
    return network, context


def add_precision_flag(parser: Any) -> None:
    """``--precision`` of the frozen-backbone evaluations."""
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("auto", *INFERENCE_PRECISIONS),
        help="fp32 (the paper's numbers), bf16 autocast, int8 dynamic quantisation (CPU), or "
        "auto: the fastest this machine runs natively; a mode it would only emulate is refused",
    )
