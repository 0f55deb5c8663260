"""Timing and reporting for the training-throughput benchmark: phase clocks, MFU, summaries."""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from trainer.train.flops import mfu

# Dense bf16/fp16 tensor-core peak (spec sheet, SXM) and what large matmuls reach in practice.
PEAK_TFLOPS_SPEC = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
PEAK_TFLOPS_MEASURED = {"H100": 800.0, "H200": 800.0, "A100": 280.0}
PHASES = ("wall_s", "data_wait_s", "augment_s", "step_s", "images")


class PhaseClock:
    """Spans of a step's phases: CUDA events on GPUs (no host sync), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[list[Any]] = []

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, marks: list[Any]) -> None:
        self.marks.append(marks)

    def spans_s(self) -> np.ndarray:
        """(steps, phases) seconds between consecutive marks (call after a device sync)."""
        if not self.marks:
            return np.zeros((0, 0))
        if self.cuda:
            return np.array(
                [
                    [a.elapsed_time(b) / 1e3 for a, b in zip(m[:-1], m[1:], strict=True)]
                    for m in self.marks
                ]
            )
        return np.array([np.diff(m) for m in self.marks])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` on GPUs, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def peak_tflops(given: float | None, device: torch.device) -> tuple[float | None, float | None]:
    """(spec peak, practically reachable peak) TFLOP/s for MFU; None when unknown (CPU)."""
    if given:
        return given, given
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, spec in PEAK_TFLOPS_SPEC.items():
        if key in name:
            return spec, PEAK_TFLOPS_MEASURED[key]
    return None, None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def _mfu(flops_per_image: float, rate: float, peak: float | None) -> float | None:
    return mfu(flops_per_image, rate, peak * 1e12) if peak else None


def summarize(
    run: Any, flops_per_image: float, peaks: tuple[float | None, float | None]
) -> dict[str, Any]:
    """img/s, TFLOP/s, MFU, peak memory and the time breakdown over a path's timed windows.

    ``run`` is the benchmark's ``PathRun`` (settings, ctx, windows, step, loss_sum, warmup_s).
    """
    windows = run.windows
    w = {k: sum(win[k] for win in windows) for k in PHASES}
    rate = w["images"] / w["wall_s"]
    ctx = run.ctx
    cuda = ctx.device.type == "cuda"
    loss = float(run.loss_sum / max(run.step, 1)) if run.loss_sum is not None else float("nan")
    busy = (w["augment_s"] + w["step_s"]) / w["wall_s"] if cuda else None
    return {
        "path": run.settings.name,
        "settings": asdict(run.settings),
        "img_per_s": rate,
        "img_per_s_per_round": [win["images"] / win["wall_s"] for win in windows],
        "step_ms": 1e3 * w["wall_s"] * ctx.config.batch_size_per_gpu / w["images"],
        "achieved_tflops": flops_per_image * rate / 1e12,
        "mfu": _mfu(flops_per_image, rate, peaks[0]),
        "mfu_vs_practical_peak": _mfu(flops_per_image, rate, peaks[1]),
        "peak_memory_gb": max(win["peak_memory_gb"] for win in windows),
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_max_rss",
        "data_wait_fraction": w["data_wait_s"] / w["wall_s"],
        "device_busy_fraction": busy,
        "breakdown_s": {
            "wall": w["wall_s"],
            "data_wait_host": w["data_wait_s"],
            "decode_and_augment": w["augment_s"],
            "forward_backward_step": w["step_s"],
        },
        "warmup_s": run.warmup_s,
        "mean_loss": loss,
    }


def print_summary(result: dict[str, Any]) -> None:
    cuda = result["peak_memory_kind"] == "cuda_max_allocated"
    clock = "device time" if cuda else "host time"
    mfu_text = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    b = result["breakdown_s"]
    tag = f"[{result['path']}]"
    rounds = ", ".join(f"{r:.1f}" for r in result["img_per_s_per_round"])
    print(
        f"{tag} {result['img_per_s']:.1f} img/s ({result['step_ms']:.1f} ms/step), "
        f"{result['achieved_tflops']:.3f} TFLOP/s, MFU {mfu_text}, peak memory "
        f"{result['peak_memory_gb']:.2f} GB ({result['peak_memory_kind']}), "
        f"data wait {100 * result['data_wait_fraction']:.1f}%"
    )
    print(
        f"{tag}   time: wall {b['wall']:.2f}s = data wait {b['data_wait_host']:.2f}s (host) | "
        f"decode+augment {b['decode_and_augment']:.2f}s | fwd+bwd+step "
        f"{b['forward_backward_step']:.2f}s ({clock}); warm-up {result['warmup_s']:.1f}s; "
        f"rounds {rounds} img/s"
    )
    if result["device_busy_fraction"] is not None:
        print(f"{tag}   GPU busy {100 * result['device_busy_fraction']:.1f}% of the wall time")
