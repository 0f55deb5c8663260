"""Batched Gaussian blur on the device, with its own sigma per row.

Separable depthwise convolutions with reflect padding and the kernel size of
:func:`blur_kernel_size` (the CPU path uses PIL's blur, like the authors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLUR_MAX_KERNEL = 13


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel size: 13 taps (+-3 sigma at sigma=2), at most 2*crop_size-1."""
    return min(BLUR_MAX_KERNEL, 2 * crop_size - 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each row with its own sigma: separable depthwise convs, reflect padding."""
    n, channels, height, width = x.shape
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    pad = kernel_size // 2
    flat = F.pad(x.reshape(1, n * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * channels, 1, kernel_size, 1), groups=n * channels)
    flat = F.conv2d(flat, kernel.view(n * channels, 1, 1, kernel_size), groups=n * channels)
    return flat.view(n, channels, height, width)
