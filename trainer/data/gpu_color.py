"""Batched colour ops on the device: ColorJitter, grayscale and solarize, parameters per row.

Colour jitter draws per-sample factors and a per-sample random order of the four ops (like
torchvision), with torchvision's float formulas (blend with black / grey mean / grayscale,
HSV hue shift); each op runs once per sample, the hue shift once over the batch
(:func:`apply_color_jitter`). No host synchronisation.
"""

from __future__ import annotations

import torch

from trainer.data.augment import BRIGHTNESS, CONTRAST, HUE, JITTER_OPS, SATURATION
from trainer.data.gpu_rows import per_row, select, uniform
from trainer.data.pil_ops import SOLARIZE_THRESHOLD

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BRIGHTNESS_OP = JITTER_OPS.index("brightness")
CONTRAST_OP = JITTER_OPS.index("contrast")
HUE_OP = JITTER_OPS.index("hue")  # the last op: the blends are the ops before it


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert pixels at or above the threshold (128 on the 0..255 scale)."""
    return torch.where(x >= SOLARIZE_THRESHOLD / 255.0, 1.0 - x, x)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1], with a per-row factor."""
    factor = per_row(x, factor)
    return (factor * x + (1 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) RGB in [0,1] -> HSV with hue in [0,1)."""
    r, g, b = x.unbind(dim=1)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    gray = chroma == 0
    saturation = chroma / torch.where(gray, torch.ones_like(value), value)
    safe_chroma = torch.where(gray, torch.ones_like(chroma), chroma)
    hue = torch.where(
        value == r,
        (g - b) / safe_chroma,
        torch.where(value == g, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma),
    )
    hue = torch.where(gray, torch.zeros_like(hue), hue)
    return torch.stack([torch.remainder(hue / 6.0, 1.0), saturation, value], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = x.unbind(dim=1)
    sector_float = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector_float
    sector = torch.remainder(sector_float, 6).long()
    p = value * (1 - saturation)
    q = value * (1 - saturation * frac)
    t = value * (1 - saturation * (1 - frac))
    red = torch.stack([value, q, p, p, t, value], dim=1)
    green = torch.stack([t, value, value, q, p, p], dim=1)
    blue = torch.stack([p, p, t, value, value, q], dim=1)
    index = sector.unsqueeze(1)
    return torch.cat([c.gather(1, index) for c in (red, green, blue)], dim=1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each row by ``shift`` (fraction of a turn, in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, :1] + per_row(hsv[:, :1], shift), 1.0)
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


def sample_jitter(
    n: int, device: torch.device, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ColorJitter(0.4, 0.4, 0.2, 0.1) parameters: ``(factors, order)``, both (n, 4).

    ``factors[:, k]`` is op k's factor (brightness, contrast, saturation: U[1-a, 1+a]; hue
    shift: U[-0.1, 0.1]); ``order[r]`` is a uniformly random permutation of the op indices.
    """
    factors = torch.stack(
        [
            uniform((n,), 1 - BRIGHTNESS, 1 + BRIGHTNESS, device, generator),
            uniform((n,), 1 - CONTRAST, 1 + CONTRAST, device, generator),
            uniform((n,), 1 - SATURATION, 1 + SATURATION, device, generator),
            uniform((n,), -HUE, HUE, device, generator),
        ],
        dim=1,
    )
    order = torch.rand((n, len(JITTER_OPS)), device=device, generator=generator).argsort(dim=1)
    return factors, order


def _blend_step(
    x: torch.Tensor, ops: torch.Tensor, factors: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """Each active row blends with its own op's reference (black, grey mean or grey image)."""
    gray = grayscale(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    reference = torch.where(
        per_row(gray, ops == BRIGHTNESS_OP),
        torch.zeros_like(mean),
        torch.where(per_row(gray, ops == CONTRAST_OP), mean, gray),
    )
    factor = factors.gather(1, ops[:, None])[:, 0]
    return select(active, blend(x, reference, factor), x)


def apply_color_jitter(
    x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """ColorJitter on the rows where ``apply``: row r runs op ``order[r, 0]``, then
    ``order[r, 1]`` and so on.

    Every op runs once per row and the hue shift (the costly op) once over the batch. The
    three blends (brightness with black, contrast with the grey mean, saturation with the grey
    image) share one formula with a per-row reference image: the blends a row runs before its
    hue shift go through three steps before the shift, the others through three steps after
    it; at each step a row runs its own next blend, or none. No host synchronisation.
    """
    position = order.argsort(dim=1)  # position[r, op]: the step at which row r runs op
    blends_before_hue = position[:, HUE_OP]
    blend_order = position[:, :HUE_OP].argsort(dim=1)  # row r's three blends, in its order
    for step in range(HUE_OP):
        x = _blend_step(x, blend_order[:, step], factors, apply & (step < blends_before_hue))
    x = select(apply, adjust_hue(x, factors[:, HUE_OP]), x)
    for step in range(HUE_OP):
        x = _blend_step(x, blend_order[:, step], factors, apply & (step >= blends_before_hue))
    return x


def color_jitter(
    x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """torchvision ColorJitter(0.4, 0.4, 0.2, 0.1) on the rows where ``apply``, per row."""
    factors, order = sample_jitter(x.shape[0], x.device, generator)
    return apply_color_jitter(x, apply, factors, order)
