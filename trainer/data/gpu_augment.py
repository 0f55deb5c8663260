"""DINO multi-crop augmentation on a batch of uint8 images already on the device.

The distribution is that of :class:`trainer.data.augment.DataAugmentationDINO` (same
:class:`~trainer.data.augment.ViewSpec` probabilities, same constants), but every op runs
batched on tensors with independent random parameters per sample and per view, and with
no host synchronisation (no ``.item()``, no data-dependent Python branches).

Views with the same crop size and scale (the two globals; all the locals) are processed
together as one batch of ``views * B`` rows, each row with its own view's probabilities.

* Random resized crop: torchvision's scale / log-ratio sampling with its 10-try fallback,
  vectorised (all 10 tries are drawn, the first valid one is kept).
* Resampling: each box is resized to S x S with PIL's antialiased bicubic filter (a=-0.5,
  support widened by the downscale factor, truncated at the box edges), written as two
  batched matrix products ``W_y @ image @ W_x^T``. Unlike ``grid_sample`` this antialiases
  large downscales exactly like the CPU path, and it needs no per-sample Python loop.
* Colour jitter: per-sample factors and a per-sample random order of the four ops (like
  torchvision), with torchvision's float formulas (blend with black / grey mean / grayscale,
  HSV hue shift); each op runs once per sample, the hue shift once over the batch
  (:func:`apply_color_jitter`).
* Gaussian blur: per-sample sigma, separable depthwise convolutions with reflect padding
  and the kernel size of :func:`blur_kernel_size` (the CPU path uses PIL's blur, like the
  authors).

Typical use in the training loop (DataLoader workers only read bytes)::

    loader = DataLoader(EncodedImageFolder(root), batch_size=64, num_workers=8, collate_fn=collate_bytes)
    multicrop = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 10).to("cuda")
    for blobs, indices in loader:
        images, indices, skipped = drop_undecoded(decode_jpegs(blobs, "cuda"), indices)
        views = multicrop(images)  # [global1, global2, local * 10], each (len(images), 3, S, S)

Memory: the list input is zero-padded to the largest image of the batch, so very large
images should be decoded at reduced size (``decode_jpegs(..., "cpu", draft_size=...)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data.augment import (
    BLUR_SIGMA,
    BRIGHTNESS,
    CONTRAST,
    CROP_ATTEMPTS,
    CROP_RATIO,
    HUE,
    JITTER_OPS,
    SATURATION,
    Recorder,
    ViewSpec,
    dino_views,
)
from trainer.data.pil_ops import SOLARIZE_THRESHOLD
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BICUBIC_A = -0.5  # PIL's bicubic coefficient
BLUR_MAX_KERNEL = 13
BRIGHTNESS_OP = JITTER_OPS.index("brightness")
CONTRAST_OP = JITTER_OPS.index("contrast")
HUE_OP = JITTER_OPS.index("hue")  # the last op: the blends are the ops before it


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel size: 13 taps (+-3 sigma at sigma=2), at most 2*crop_size-1 (reflect pad)."""
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


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert pixels at or above the threshold (128 on the 0..255 scale)."""
    return torch.where(x >= SOLARIZE_THRESHOLD / 255.0, 1.0 - x, x)


def _uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, device=device, generator=generator)


def sample_crop_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(N, 4) float64 boxes (top, left, h, w), one independent RandomResizedCrop draw per image size."""
    device, n = heights.device, heights.shape[0]
    height, width = heights.double()[:, None], widths.double()[:, None]
    target_area = (
        height
        * width
        * _uniform((n, CROP_ATTEMPTS), scale[0], scale[1], device, generator).double()
    )
    log_ratio = _uniform(
        (n, CROP_ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), device, generator
    )
    aspect = torch.exp(log_ratio.double())
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.int().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
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
    too_tall, too_wide = in_ratio < min(ratio), in_ratio > max(ratio)
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
    """(N, out_size, axis_len) antialiased bicubic weights mapping [start, start+length) to out_size pixels."""
    start, length = start.float()[:, None, None], length.float()[:, None, None]
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
    """Crop ``views`` boxes per image of ``batch`` (B,3,H,W) and resize them: (views*B, 3, size, size) in [0, 1].

    ``boxes`` is (views*B, 4), view-major (row v*B + b is view v of image b).
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


def _per_row(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (x.dim() - 1)))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1], with a per-row factor."""
    factor = _per_row(x, factor)
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
    hue = torch.remainder(hsv[:, :1] + _per_row(hsv[:, :1], shift), 1.0)
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


def _coins(probabilities: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return (
        torch.rand(probabilities.shape, device=probabilities.device, generator=generator)
        < probabilities
    )


def _select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_row(new, mask), new, old)


def sample_jitter(
    n: int, device: torch.device, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ColorJitter(0.4, 0.4, 0.2, 0.1) parameters: ``(factors, order)``, both (n, 4).

    ``factors[:, k]`` is op k's factor (brightness, contrast, saturation: U[1-a, 1+a]; hue
    shift: U[-0.1, 0.1]); ``order[r]`` is a uniformly random permutation of the op indices.
    """
    factors = torch.stack(
        [
            _uniform((n,), 1 - BRIGHTNESS, 1 + BRIGHTNESS, device, generator),
            _uniform((n,), 1 - CONTRAST, 1 + CONTRAST, device, generator),
            _uniform((n,), 1 - SATURATION, 1 + SATURATION, device, generator),
            _uniform((n,), -HUE, HUE, device, generator),
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
        _per_row(gray, ops == BRIGHTNESS_OP),
        torch.zeros_like(mean),
        torch.where(_per_row(gray, ops == CONTRAST_OP), mean, gray),
    )
    factor = factors.gather(1, ops[:, None])[:, 0]
    return _select(active, blend(x, reference, factor), x)


def apply_color_jitter(
    x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """ColorJitter on the rows where ``apply``: row r runs op ``order[r, 0]``, then ``order[r, 1]``...

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
    x = _select(apply, adjust_hue(x, factors[:, HUE_OP]), x)
    for step in range(HUE_OP):
        x = _blend_step(x, blend_order[:, step], factors, apply & (step >= blends_before_hue))
    return x


def color_jitter(
    x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """torchvision ColorJitter(0.4, 0.4, 0.2, 0.1) on the rows where ``apply``, per-row parameters."""
    factors, order = sample_jitter(x.shape[0], x.device, generator)
    return apply_color_jitter(x, apply, factors, order)


def pad_to_batch(
    images: list[torch.Tensor] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad uint8 (3,H,W) images into one (B,3,Hmax,Wmax) batch; also return heights and widths."""
    if isinstance(images, torch.Tensor):
        _check_image(images, "images", batched=True)
        b, _, height, width = images.shape
        full = torch.full((b,), height, device=images.device, dtype=torch.int64)
        return images, full, torch.full((b,), width, device=images.device, dtype=torch.int64)
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one uint8 (3,H,W) tensor")
    for index, image in enumerate(images):
        _check_image(image, f"images[{index}]", batched=False)
    device = images[0].device
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.uint8, device=device)
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    sizes = torch.tensor([list(i.shape[1:]) for i in images], dtype=torch.int64)
    if device.type == "cuda":
        sizes = sizes.pin_memory()
    sizes = sizes.to(device, non_blocking=True)
    return batch, sizes[:, 0], sizes[:, 1]


def _check_image(image: torch.Tensor, name: str, batched: bool) -> None:
    want = "(B,3,H,W)" if batched else "(3,H,W)"
    if image.dtype != torch.uint8 or image.dim() != (4 if batched else 3) or image.shape[-3] != 3:
        raise ValueError(
            f"{name} must be a uint8 {want} tensor, got {image.dtype} of shape {tuple(image.shape)}"
        )


def _group_views(views: list[ViewSpec]) -> list[list[int]]:
    groups: dict[tuple[int, tuple[float, float]], list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault((view.size, view.scale), []).append(index)
    return list(groups.values())


class GPUMultiCrop(nn.Module):
    """Batched DINO multi-crop: uint8 images -> [global1, global2, local * N], each (B, 3, S, S) normalised.

    ``views`` and ``record`` behave as in :class:`trainer.data.augment.DataAugmentationDINO`;
    ``record(view_name, op_name, value)`` receives per-sample bool masks (or the (B, 4)
    crop boxes for ``"crop"``) of each view.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float],
        local_crops_scale: tuple[float, float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
    ) -> None:
        super().__init__()
        self.views = dino_views(
            global_crops_scale,
            local_crops_scale,
            local_crops_number,
            global_crops_size,
            local_crops_size,
        )
        self.record: Recorder | None = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(
        self, images: list[torch.Tensor] | torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        batch, heights, widths = pad_to_batch(images)
        outputs: list[torch.Tensor] = [torch.empty(0)] * len(self.views)
        with torch.autocast(
            batch.device.type, enabled=False
        ):  # float32 even inside a training autocast
            for group in _group_views(self.views):
                crops = self._augment_group(
                    batch, heights, widths, [self.views[i] for i in group], generator
                )
                for view_index, crop in zip(group, crops.chunk(len(group)), strict=True):
                    outputs[view_index] = crop
        return outputs

    def _probabilities(
        self, views: list[ViewSpec], attribute: str, b: int, device: torch.device
    ) -> torch.Tensor:
        return torch.cat(
            [torch.full((b,), float(getattr(v, attribute)), device=device) for v in views]
        )

    def _decide(
        self,
        views: list[ViewSpec],
        op: str,
        b: int,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        mask = _coins(self._probabilities(views, f"{op}_p", b, device), generator)
        self._report(views, op, mask, b)
        return mask

    def _report(self, views: list[ViewSpec], op: str, values: torch.Tensor, b: int) -> None:
        if self.record is not None:
            for view, chunk in zip(views, values.split(b), strict=True):
                self.record(view.name, op, chunk)

    def _augment_group(
        self,
        batch: torch.Tensor,
        heights: torch.Tensor,
        widths: torch.Tensor,
        views: list[ViewSpec],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        b, device, size = batch.shape[0], batch.device, views[0].size
        repeat = len(views)
        boxes = sample_crop_boxes(
            heights.repeat(repeat), widths.repeat(repeat), views[0].scale, CROP_RATIO, generator
        )
        self._report(views, "crop", boxes, b)
        x = resized_crops(batch, boxes, size)
        x = _select(self._decide(views, "flip", b, device, generator), x.flip(-1), x)
        x = color_jitter(x, self._decide(views, "jitter", b, device, generator), generator)
        gray = grayscale(x).expand(-1, 3, -1, -1)
        x = _select(self._decide(views, "grayscale", b, device, generator), gray, x)
        blur_mask = self._decide(views, "blur", b, device, generator)
        sigma = _uniform((x.shape[0],), BLUR_SIGMA[0], BLUR_SIGMA[1], device, generator)
        x = _select(blur_mask, gaussian_blur(x, sigma, blur_kernel_size(size)), x)
        x = _select(self._decide(views, "solarize", b, device, generator), solarize(x), x)
        return (x - self.mean.to(device)) / self.std.to(device)
