"""The torch work: any block's CLS (and query) attention, the paper's masks, IoU, and overlays.

Only the last block materialises attention weights, and only for the CLS query
(:meth:`trainer.model.vit.DinoViT.get_cls_attention`); every other block is fused SDPA.
A semaphore bounds concurrent inferences; past a short wait the caller gets 503.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from backend.analysis.block_maps import RawMaps, compute_block_maps
from backend.analysis.overlay_render import encode, heat_batch, mask_batch
from backend.errors import Busy
from trainer.model.attention_maps import jaccard, threshold_masks, upsample_nearest
from trainer.model.vit import DinoViT


@dataclass
class MapSet:
    """Per-head attention maps and what is derived from them."""

    attentions: np.ndarray  # heads, gh, gw float32
    mean_attention: np.ndarray  # gh, gw
    masks: np.ndarray  # heads, gh, gw bool
    coverage: list[float]


class InferenceEngine:
    """Runs models under ``inference_mode`` (optionally bf16 autocast) with bounded concurrency."""

    def __init__(
        self, max_concurrency: int, queue_timeout_s: float, precision: str = "fp32"
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}; choose one of fp32, bf16")
        self.precision = precision
        self.queue_timeout_s = queue_timeout_s
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.max_concurrency = max_concurrency

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one inference slot; 503 with Retry-After when none frees up in time."""
        if not self._slots.acquire(timeout=self.queue_timeout_s):
            raise Busy(
                f"all {self.max_concurrency} inference slots are busy; retry in a few seconds",
                headers={"Retry-After": str(max(1, round(self.queue_timeout_s)))},
            )
        try:
            yield
        finally:
            self._slots.release()

    def cls_attention(
        self, model: DinoViT, tensor: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """``(heads, gh, gw)`` float32 CPU tensor of last-block CLS-to-patch attention."""
        use_bf16 = self.precision == "bf16"
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16),
        ):
            attn = model.get_cls_attention(tensor.to(device, non_blocking=True))
        return attn[0].float().cpu()

    def block_maps(
        self,
        model: DinoViT,
        tensor: torch.Tensor,
        device: torch.device,
        layer: int,
        query: tuple[int, int] | None = None,
        pca: bool = False,
    ) -> RawMaps:
        """Block ``layer``'s CLS (and ``query`` patch) attention rows, and the PCA when asked."""
        use_bf16 = self.precision == "bf16"
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16),
        ):
            return compute_block_maps(
                model, tensor.to(device, non_blocking=True), layer, query, pca
            )


def derive_maps(attn: torch.Tensor, threshold: float) -> MapSet:
    """Masks by the paper's procedure, mean over heads, and the fraction of patches kept."""
    masks = threshold_masks(attn, threshold)
    coverage = masks.flatten(1).float().mean(1).tolist()
    return MapSet(attn.numpy(), attn.mean(0).numpy(), masks.numpy(), [float(c) for c in coverage])


def head_ious(masks: np.ndarray, gt: np.ndarray, patch: int) -> list[float]:
    """Jaccard of each head's mask, upsampled to pixels, with the boolean ``gt`` (h x w)."""
    pixel_masks = torch.from_numpy(upsample_nearest(masks, patch))
    return [float(v) for v in jaccard(pixel_masks, torch.from_numpy(gt)).tolist()]


def png_b64(image: Image.Image) -> str:
    return encode(np.asarray(image.convert("RGB")), "png")


def render_overlays(
    image: Image.Image, maps: MapSet, patch: int, fmt: str = "png"
) -> dict[str, object]:
    """Base64 pictures (``fmt``) at the processed size: image, each head, the mean, each mask."""
    base = np.asarray(image.convert("RGB"))
    heats = heat_batch(base, np.concatenate([maps.attentions, maps.mean_attention[None]]), patch)
    masks = mask_batch(base, maps.masks, patch)
    return {
        "image": encode(base, fmt),
        "heads": [encode(h, fmt) for h in heats[:-1]],
        "mean": encode(heats[-1], fmt),
        "masks": [encode(m, fmt) for m in masks],
    }
