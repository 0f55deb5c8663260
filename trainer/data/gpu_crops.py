"""Batched random resized crops on the device: torchvision's box sampling, PIL's resampling.

* Random resized crop: torchvision's scale / log-ratio sampling with its 10-try fallback,
  vectorised (all 10 tries are drawn, the first valid one is kept).
* Resampling: each box is resized to S x S with PIL's antialiased bicubic filter (a=-0.5,
  support widened by the downscale factor, truncated at the box edges), written as two
  batched matrix products ``W_y @ image @ W_x^T``. Unlike ``grid_sample`` this antialiases
  large downscales exactly like the CPU path, and it needs no per-sample Python loop.
"""

from __future__ import annotations

import math

import torch

from trainer.data.augment import CROP_ATTEMPTS, CROP_RATIO
from trainer.data.gpu_rows import uniform

BICUBIC_A = -0.5  # PIL's bicubic coefficient


def sample_crop_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(N, 4) float64 boxes (top, left, h, w): a RandomResizedCrop draw per image size."""
    device = heights.device
    n = heights.shape[0]
    height = heights.double()[:, None]
    width = widths.double()[:, None]
    target_area = (
        height * width * uniform((n, CROP_ATTEMPTS), scale[0], scale[1], device, generator).double()
    )
    log_ratio = uniform(
        (n, CROP_ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), device, generator
    )
    aspect = torch.exp(log_ratio.double())
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.int().argmax(dim=1, keepdim=True)
    w = w.gather(1, first)[:, 0]
    h = h.gather(1, first)[:, 0]
    height = height[:, 0]
    width = width[:, 0]
    top = torch.floor(torch.rand(n, device=device, generator=generator).double() * (height - h + 1))
    left = torch.floor(torch.rand(n, device=device, generator=generator).double() * (width - w + 1))
    fallback = _fallback_boxes(height, width, ratio)
    random_box = torch.stack(
        [torch.minimum(top, height - h), torch.minimum(left, width - w), h, w], dim=1
    )
    return torch.where(valid.any(dim=1, keepdim=True), random_box, fallback)


def _fallback_boxes(
    height: torch.Tensor, width: torch.Tensor, ratio: tuple[float, float]
) -> torch.Tensor:
    in_ratio = width / height
    too_tall = in_ratio < min(ratio)
    too_wide = in_ratio > max(ratio)
    w = torch.where(too_wide, torch.round(height * max(ratio)), width)
    h = torch.where(too_tall, torch.round(width / min(ratio)), height)
    return torch.stack([torch.floor((height - h) / 2), torch.floor((width - w) / 2), h, w], dim=1)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    near = ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * BICUBIC_A - 4 * BICUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(
    start: torch.Tensor, length: torch.Tensor, out_size: int, axis_len: int
) -> torch.Tensor:
    """(N, out_size, axis_len) antialiased bicubic weights: [start, start+length) to out_size."""
    start = start.float()[:, None, None]
    length = length.float()[:, None, None]
    step = length / out_size
    centers = (
        start
        + (torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None] + 0.5)
        * step
    )
    pixels = torch.arange(axis_len, device=start.device, dtype=torch.float32)[None, None, :]
    weights = _cubic((pixels + 0.5 - centers) / step.clamp(min=1.0))
    inside = (pixels >= start) & (pixels < start + length)
    weights = weights * inside
    return weights / weights.sum(dim=-1, keepdim=True)


def resized_crops(batch: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``views`` boxes per image of ``batch`` (B,3,H,W), resized to (views*B, 3, size, size).

    ``boxes`` is (views*B, 4), view-major (row v*B + b is view v of image b); values in [0, 1].
    """
    b, _, height, width = batch.shape
    views = boxes.shape[0] // b
    rows_w = resample_weights(boxes[:, 0], boxes[:, 2], size, height)  # (V*B, S, H)
    cols_w = resample_weights(boxes[:, 1], boxes[:, 3], size, width)  # (V*B, S, W)
    rows_w = rows_w.view(views, b, size, height).transpose(0, 1).reshape(b, views * size, height)
    cols_w = cols_w.view(views, b, size, width).transpose(0, 1).reshape(b * views, size, width)
    image = (batch.float() / 255.0).permute(0, 2, 1, 3).reshape(b, height, 3 * width)
    tall = torch.bmm(rows_w, image).view(b * views, size * 3, width)  # rows: (view, out_y, channel)
    out = torch.bmm(tall, cols_w.transpose(1, 2)).view(b, views, size, 3, size)
    return out.permute(1, 0, 3, 2, 4).reshape(views * b, 3, size, size).clamp(0.0, 1.0)
