"""The fast path's roofline: its FLOPs against the GEMM and fused-attention rates measured here.

Used by ``benchmarks/attention_latency.py``: the floor is the fast path's linear FLOPs at this
CPU's measured GEMM rate plus its attention FLOPs at the measured fused SDPA rate (FLOPs
counted as in ``trainer/train/flops.py``), and the ceiling on the speed-up is the baseline's
latency over that floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.model.vit import DinoViT


def _rate(fn: Callable[[], object], flops: float, repeats: int = 5) -> float:
    """FLOP/s of ``fn`` (best of ``repeats`` after a warm-up)."""
    fn()
    best = min(_seconds(fn) for _ in range(repeats))
    return flops / best


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def kernel_rates(tokens: int, dim: int, heads: int, dtype: torch.dtype) -> tuple[float, float]:
    """(GEMM FLOP/s on a ``tokens x dim x 4 dim`` product, fused SDPA FLOP/s at ``tokens``)."""
    a, b = torch.randn(tokens, dim, dtype=dtype), torch.randn(dim, 4 * dim, dtype=dtype)
    q, k, v = (torch.randn(1, heads, tokens, dim // heads, dtype=dtype) for _ in range(3))
    with torch.inference_mode():
        gemm = _rate(lambda: a @ b, 2.0 * tokens * dim * 4 * dim)
        sdpa = _rate(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 4.0 * tokens**2 * dim
        )
    return gemm, sdpa


@dataclass
class Roofline:
    arch: str
    linear_gflop: float
    attention_gflop: float
    gemm_gflops: float
    sdpa_gflops: float
    floor_ms: float
    baseline_p50_ms: float
    max_speedup: float


def roofline(arch: str, model: DinoViT, size: int, precision: str, baseline_ms: float) -> Roofline:
    """The fast path's floor at this run's kernel rates, and the speed-up ceiling it implies."""
    d, depth, heads, p = model.embed_dim, len(model.blocks), model.num_heads, model.patch_size
    n = (size // p) ** 2 + 1
    block_linear = 2.0 * n * d * (4 * d + 2 * model.blocks[0].mlp.fc1.out_features)
    linear = (
        2.0 * (n - 1) * 3 * p * p * d + (depth - 1) * block_linear + 2.0 * n * d * d + 2.0 * d * d
    )
    attention = (depth - 1) * 4.0 * n * n * d + 4.0 * n * d
    gemm, sdpa = kernel_rates(n, d, heads, torch.bfloat16 if precision == "bf16" else torch.float32)
    floor_ms = 1e3 * (linear / gemm + attention / sdpa)
    return Roofline(
        arch,
        linear / 1e9,
        attention / 1e9,
        gemm / 1e9,
        sdpa / 1e9,
        floor_ms,
        baseline_ms,
        baseline_ms / floor_ms,
    )


def print_roofline(r: Roofline) -> None:
    print(
        f"{r.arch:8s} roofline: fast path {r.linear_gflop:.1f} GFLOP linear + "
        f"{r.attention_gflop:.1f} GFLOP attention; measured here GEMM {r.gemm_gflops:.0f} "
        f"GFLOP/s, fused SDPA {r.sdpa_gflops:.0f} GFLOP/s -> floor {r.floor_ms:.0f} ms, so at "
        f"most x{r.max_speedup:.2f} over the {r.baseline_p50_ms:.0f} ms baseline on this machine",
        flush=True,
    )
