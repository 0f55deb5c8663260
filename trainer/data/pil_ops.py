"""The CPU multi-crop's pixel operations on uint8 PIL images.

Each colour op gives exactly the pixels of the torchvision function that the DINO authors'
pipeline calls on a PIL image (``adjust_brightness`` / ``adjust_contrast`` /
``adjust_saturation`` / ``adjust_hue`` / ``rgb_to_grayscale``), with less work around it:
brightness and contrast are one 256-entry lookup table per call (PIL's ``Image.blend``
arithmetic: float32, truncated, clipped), the hue shift is PIL's HSV round trip computed with
integer look-up tables (:mod:`trainer.data.hue_lut`, the same bytes).
Blur and solarize are PIL's own (``ImageFilter.GaussianBlur``, ``ImageOps.solarize``), as in
the authors' code. :func:`to_normalized_tensor` is ``ToTensor`` + ``Normalize`` in one step
at the end of a view, with the same float32 values. :func:`resized_crop` (RandomResizedCrop's
crop and bicubic resize) runs PIL's antialiased bicubic filter as torch's uint8 kernel, which
is several times faster than PIL's and differs from it only by rounding.

A grayscale view stays a one-band ``"L"`` image until :func:`to_normalized_tensor`, which
repeats it over the three channels: blur and solarize act per band, so the result is the same
as on three equal bands, for a third of the work.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from trainer.data import hue_lut
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

SOLARIZE_THRESHOLD = 128
REDUCING_GAP = 3.0  # as PIL's resize(reducing_gap=3): box-average first for 6x+ downscales
_IDENTITY = list(range(256))
_LEVELS = np.arange(256, dtype=np.float32)
_SOLARIZE = [i if i < SOLARIZE_THRESHOLD else 255 - i for i in range(256)]


def image_pixels(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) uint8 channels-last copy of an RGB image, for :func:`resized_crop`."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)


def resized_crop(
    image: Image.Image, pixels: torch.Tensor, box: tuple[int, int, int, int], size: int
) -> Image.Image:
    """The ``(top, left, h, w)`` box of ``image`` resized to ``size`` x ``size`` (bicubic).

    torchvision's ``resized_crop`` on a PIL image (crop, then PIL's antialiased bicubic),
    computed by torch's uint8 antialiased bicubic on ``pixels`` (:func:`image_pixels` of
    ``image``): the same filter (PIL's, a = -0.5, support widened by the downscale factor),
    several times faster, with at most one or two levels of rounding difference on a few
    pixels. A downscale by ``2 * REDUCING_GAP`` or more first averages boxes of pixels
    (``Image.reduce``), as PIL's ``reducing_gap`` does.
    """
    top, left, h, w = box
    reduce_x = max(int(w / size / REDUCING_GAP), 1)
    reduce_y = max(int(h / size / REDUCING_GAP), 1)
    if reduce_x > 1 or reduce_y > 1:
        reduced = image.reduce((reduce_x, reduce_y), box=(left, top, left + w, top + h))
        crop = image_pixels(reduced)
    else:
        crop = pixels[:, :, top : top + h, left : left + w]
        crop = crop.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)
    return Image.fromarray(out[0].permute(1, 2, 0).numpy())


def apply_table(image: Image.Image, table: list[int]) -> Image.Image:
    """``image.point(table)`` for a table of ints (256 per band), without re-rounding it per call.

    ``Image.point`` rounds every entry of a list table in Python on each call, which costs
    more than mapping a 96 x 96 view; the core mapping is the same.
    """
    image.load()
    return image._new(image.im.point(table, None))


def _blend_table(base: float, factor: float, bands: int) -> list[int]:
    """``Image.blend(constant base, image, factor)`` per level: float32, truncated, clipped."""
    levels = (_LEVELS - np.float32(base)) * np.float32(factor) + np.float32(base)
    return np.minimum(np.maximum(levels, 0), 255).astype(np.uint8).tolist() * bands


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's ``adjust_brightness`` (``ImageEnhance.Brightness``): blend with black."""
    return apply_table(image, _blend_table(0.0, factor, len(image.getbands())))


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's ``adjust_contrast`` (``ImageEnhance.Contrast``): blend with the grey mean."""
    gray = image if image.mode == "L" else image.convert("L")
    mean = int(np.asarray(gray).mean() + 0.5)  # ImageStat's mean: the exact sum over the count
    return apply_table(image, _blend_table(mean, factor, len(image.getbands())))


def adjust_saturation(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's ``adjust_saturation`` (``ImageEnhance.Color``): blend with the grey image."""
    return Image.blend(image.convert("L").convert(image.mode), image, factor)


def _hue_table(step: int) -> list[int]:
    return [(level + step) % 256 for level in range(256)] + _IDENTITY + _IDENTITY


_HUE_TABLES = {step: _hue_table(step) for step in range(256)}


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """torchvision's ``adjust_hue``: the uint8 hue band rotated by ``int(shift * 255)`` levels.

    An RGB image goes through :func:`trainer.data.hue_lut.rotate_hue` (the same bytes without
    PIL's float HSV conversions); PIL's own round trip is kept for other modes and for a PIL
    whose conversions the tables do not reproduce. Single-band images are returned unchanged,
    as torchvision does.
    """
    if image.mode in ("L", "1", "I", "F"):
        return image  # torchvision leaves single-band images as they are
    step = int(shift * 255) % 256  # torchvision: np.int32(shift * 255), wrapped to uint8
    tables = hue_lut.tables() if image.mode == "RGB" else None
    if tables is not None:
        return hue_lut.rotate_hue(image, step, tables)
    return apply_table(image.convert("HSV"), _HUE_TABLES[step]).convert(image.mode)


def grayscale(image: Image.Image) -> Image.Image:
    """ITU-R 601-2 luma as a one-band image (``rgb_to_grayscale``'s values, not yet repeated)."""
    return image.convert("L")


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """PIL's Gaussian blur with standard deviation ``sigma``, as the authors' ``GaussianBlur``."""
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def solarize(image: Image.Image) -> Image.Image:
    """``ImageOps.solarize``: levels at or above 128 inverted."""
    return apply_table(image, _SOLARIZE * len(image.getbands()))


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 ImageNet-normalised tensor of an RGB or L image (L repeated 3 times).

    ``ToTensor`` then ``Normalize``, with their very operations (divide by 255, subtract the
    mean, divide by the std), so the values are theirs bit for bit.
    """
    pixels = torch.from_numpy(np.array(image))
    planes = pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels.expand(3, -1, -1)
    return planes.contiguous().float().div_(255).sub_(_MEAN).div_(_STD)
