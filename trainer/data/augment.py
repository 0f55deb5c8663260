"""DINO multi-crop augmentation on PIL images (the CPU / DataLoader-worker path).

Every image becomes ``2 + local_crops_number`` views, globals first. Each view is

    random resized crop (bicubic) -> horizontal flip (p=0.5)
    -> colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; random order; p=0.8)
    -> grayscale (p=0.2) -> Gaussian blur (sigma ~ U[0.1, 2]) -> solarize (threshold 128)
    -> to tensor -> ImageNet normalisation

with the blur applied with p=1.0 on global view 1, p=0.1 on global view 2 and p=0.5 on
every local view, and solarize only on global view 2 (p=0.2), as in Caron et al. 2021.

The probabilities live in :class:`ViewSpec` records built by :func:`dino_views`; the GPU
path (:mod:`trainer.data.gpu_augment`) uses the very same records, so both paths share one
source of truth. Every random decision goes through an optional ``record`` hook
(``record(view_name, op_name, value)``) so that tests can measure application rates.

Crop, flip, jitter and grayscale run on the PIL image (torchvision functional ops); blur
and solarize run on the float tensor in [0, 1] (no uint8 rounding), exactly like the GPU
path, which imports :func:`gaussian_blur` and :func:`solarize` from here.

Blur kernel: the authors use PIL's ``GaussianBlur(radius=sigma)``; here an explicit
separable Gaussian kernel of ``BLUR_MAX_KERNEL = 13`` taps (+-3 sigma at the largest
sigma, 2.0) is used with reflect padding, shrunk to ``2 * crop_size - 1`` taps for crops
smaller than 7 px (reflect padding needs the pad to be smaller than the image), see
:func:`blur_kernel_size`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

FLIP_P = 0.5
JITTER_P = 0.8
GRAYSCALE_P = 0.2
GLOBAL1_BLUR_P = 1.0
GLOBAL2_BLUR_P = 0.1
LOCAL_BLUR_P = 0.5
GLOBAL2_SOLARIZE_P = 0.2

BRIGHTNESS = 0.4
CONTRAST = 0.4
SATURATION = 0.2
HUE = 0.1
BLUR_SIGMA = (0.1, 2.0)
BLUR_MAX_KERNEL = 13
SOLARIZE_THRESHOLD = 128
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

Recorder = Callable[[str, str, object], None]


@dataclass(frozen=True)
class ViewSpec:
    """Crop geometry and per-op probabilities of one view."""

    name: str
    size: int
    scale: tuple[float, float]
    flip_p: float = FLIP_P
    jitter_p: float = JITTER_P
    grayscale_p: float = GRAYSCALE_P
    blur_p: float = 0.0
    solarize_p: float = 0.0


def _check_scale(name: str, scale: tuple[float, float]) -> tuple[float, float]:
    if len(scale) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {scale!r}")
    low, high = float(scale[0]), float(scale[1])
    if not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
        raise ValueError(f"{name} values must lie in (0, 1], got {scale!r}")
    if low > high:
        raise ValueError(f"{name} must have min <= max, got {scale!r}")
    return low, high


def _check_positive_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def dino_views(global_crops_scale: tuple[float, float], local_crops_scale: tuple[float, float],
               local_crops_number: int, global_crops_size: int = 224, local_crops_size: int = 96) -> list[ViewSpec]:
    """The validated list of view specs, globals first: [global1, global2, local * N]."""
    global_scale = _check_scale("global_crops_scale", global_crops_scale)
    local_scale = _check_scale("local_crops_scale", local_crops_scale)
    _check_positive_int("local_crops_number", local_crops_number, 0)
    _check_positive_int("global_crops_size", global_crops_size, 1)
    _check_positive_int("local_crops_size", local_crops_size, 1)
    global1 = ViewSpec("global1", global_crops_size, global_scale, blur_p=GLOBAL1_BLUR_P)
    global2 = ViewSpec("global2", global_crops_size, global_scale, blur_p=GLOBAL2_BLUR_P,
                       solarize_p=GLOBAL2_SOLARIZE_P)
    local = ViewSpec("local", local_crops_size, local_scale, blur_p=LOCAL_BLUR_P)
    return [global1, global2] + [local] * local_crops_number


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel size: 13 taps (+-3 sigma at sigma=2), at most 2*crop_size-1 for reflect padding."""
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


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image file as an RGB PIL image (errors propagate to the caller)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return float(torch.rand(1, generator=generator)) < p


def sample_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float] = CROP_RATIO,
                    generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: RandomResizedCrop's sampling with its 10-try fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return fallback_crop_box(height, width, ratio)


def fallback_crop_box(height: int, width: int, ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """Central crop used when all tries fail: the whole image, clipped to the allowed aspect ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _color_jitter(image: Image.Image, generator: torch.Generator | None) -> Image.Image:
    order = torch.randperm(4, generator=generator).tolist()
    brightness = _uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, generator)
    contrast = _uniform(1 - CONTRAST, 1 + CONTRAST, generator)
    saturation = _uniform(1 - SATURATION, 1 + SATURATION, generator)
    hue = _uniform(-HUE, HUE, generator)
    for op in order:
        if op == 0:
            image = TF.adjust_brightness(image, brightness)
        elif op == 1:
            image = TF.adjust_contrast(image, contrast)
        elif op == 2:
            image = TF.adjust_saturation(image, saturation)
        else:
            image = TF.adjust_hue(image, hue)
    return image


class DataAugmentationDINO:
    """Callable turning one PIL image into the list of DINO views (globals first).

    ``views`` (a list of :class:`ViewSpec`) may be replaced, e.g. to switch an op off in a
    test; ``record`` is an optional hook called as ``record(view_name, op_name, value)``
    for every random decision (``value`` is a bool, or the crop box for ``"crop"``).
    """

    def __init__(self, global_crops_scale: tuple[float, float], local_crops_scale: tuple[float, float],
                 local_crops_number: int, global_crops_size: int = 224, local_crops_size: int = 96) -> None:
        self.views = dino_views(global_crops_scale, local_crops_scale, local_crops_number,
                                global_crops_size, local_crops_size)
        self.record: Recorder | None = None

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return [self.augment_view(image, view, generator) for view in self.views]

    def _decide(self, view: ViewSpec, op: str, p: float, generator: torch.Generator | None) -> bool:
        applied = _coin(p, generator)
        if self.record is not None:
            self.record(view.name, op, applied)
        return applied

    def augment_view(self, image: Image.Image, view: ViewSpec,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """One normalised (3, S, S) float view of ``image`` following ``view``."""
        box = sample_crop_box(image.height, image.width, view.scale, CROP_RATIO, generator)
        if self.record is not None:
            self.record(view.name, "crop", box)
        out = TF.resized_crop(image, *box, [view.size, view.size], InterpolationMode.BICUBIC)
        if self._decide(view, "flip", view.flip_p, generator):
            out = TF.hflip(out)
        if self._decide(view, "jitter", view.jitter_p, generator):
            out = _color_jitter(out, generator)
        if self._decide(view, "grayscale", view.grayscale_p, generator):
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        tensor = TF.to_tensor(out)
        if self._decide(view, "blur", view.blur_p, generator):
            sigma = torch.full((1,), _uniform(BLUR_SIGMA[0], BLUR_SIGMA[1], generator))
            tensor = gaussian_blur(tensor[None], sigma, blur_kernel_size(view.size))[0]
        if self._decide(view, "solarize", view.solarize_p, generator):
            tensor = solarize(tensor)
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)
