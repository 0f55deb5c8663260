"""The CPU multi-crop's pixel ops (trainer/data/pil_ops.py) against torchvision / PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

from trainer.data import pil_ops
from trainer.data.augment import (
    CROP_ATTEMPTS,
    CROP_RATIO,
    DataAugmentationDINO,
    crop_box_from_draws,
)
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def photo(height: int = 40, width: int = 52, seed: int = 0) -> Image.Image:
    """Colour blobs plus noise, every level from 0 to 255 present."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.integers(-60, 61, (height, width, 3))
    noisy.reshape(-1, 3)[:256] = np.arange(256)[:, None]
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("seed", range(4))
def test_colour_ops_give_torchvisions_pixels_exactly(seed):
    image = photo(seed=seed)
    rng = np.random.default_rng(seed)
    for factor in [*rng.uniform(0.6, 1.4, 6), 0.0, 1.0, 1.4]:
        assert same_pixels(
            pil_ops.adjust_brightness(image, factor), TF.adjust_brightness(image, factor)
        )
        assert same_pixels(
            pil_ops.adjust_contrast(image, factor), TF.adjust_contrast(image, factor)
        )
        assert same_pixels(
            pil_ops.adjust_saturation(image, factor), TF.adjust_saturation(image, factor)
        )
    for shift in [*rng.uniform(-0.1, 0.1, 8), -0.1, -0.003, 0.0, 0.003, 0.1]:
        assert same_pixels(pil_ops.adjust_hue(image, shift), TF.adjust_hue(image, shift)), shift
    gray = pil_ops.grayscale(image)
    assert gray.mode == "L"
    assert same_pixels(gray.convert("RGB"), TF.rgb_to_grayscale(image, num_output_channels=3))


def test_blur_and_solarize_are_pils_on_rgb_and_on_one_band():
    image = photo(seed=5)
    for sigma in (0.1, 0.7, 2.0):
        reference = image.filter(ImageFilter.GaussianBlur(radius=sigma))
        assert same_pixels(pil_ops.gaussian_blur(image, sigma), reference)
        gray = pil_ops.grayscale(image)
        assert same_pixels(
            pil_ops.gaussian_blur(gray, sigma).convert("RGB"),
            gray.convert("RGB").filter(ImageFilter.GaussianBlur(radius=sigma)),
        )
    assert same_pixels(pil_ops.solarize(image), ImageOps.solarize(image))
    gray = pil_ops.grayscale(image)
    assert same_pixels(
        pil_ops.solarize(gray).convert("RGB"), ImageOps.solarize(gray.convert("RGB"))
    )


def test_apply_table_equals_image_point():
    image = photo(seed=6)
    table = list(np.random.default_rng(6).integers(0, 256, 768))
    assert same_pixels(pil_ops.apply_table(image, [int(v) for v in table]), image.point(table))
    hsv = image.convert("HSV")
    assert same_pixels(pil_ops.apply_table(hsv, [int(v) for v in table]), hsv.point(table))


def test_normalized_tensor_equals_to_tensor_then_normalize_bit_for_bit():
    image = photo(seed=7)
    expected = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(pil_ops.to_normalized_tensor(image), expected)
    gray = pil_ops.grayscale(image)
    assert torch.equal(
        pil_ops.to_normalized_tensor(gray),
        TF.normalize(TF.to_tensor(gray.convert("RGB")), IMAGENET_MEAN, IMAGENET_STD),
    )


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ((3, 5, 30, 41), 16),
        ((10, 0, 6, 7), 9),
        ((0, 0, 40, 52), 64),
        ((2, 4, 33, 33), 33),
        ((1, 1, 20, 12), 24),
    ],
)
def test_resized_crop_is_pils_bicubic_crop_within_rounding(box, size):
    image = photo(seed=8)
    ours = np.asarray(
        pil_ops.resized_crop(image, pil_ops.image_pixels(image), box, size), dtype=np.int16
    )
    reference = np.asarray(
        TF.resized_crop(image, *box, [size, size], InterpolationMode.BICUBIC), dtype=np.int16
    )
    assert ours.shape == reference.shape == (size, size, 3)
    assert np.abs(ours - reference).max() <= 2 and np.abs(ours - reference).mean() < 0.05


def test_large_downscales_reduce_first_like_pils_reducing_gap():
    image = photo(300, 420, seed=9)
    box = (10, 20, 280, 390)  # 390 x 280 px to 40 x 40: reduced 3x first, then bicubic
    ours = np.asarray(
        pil_ops.resized_crop(image, pil_ops.image_pixels(image), box, 40), dtype=np.int16
    )
    crop = image.crop((20, 10, 410, 290))
    gap = np.asarray(
        crop.resize((40, 40), Image.Resampling.BICUBIC, reducing_gap=pil_ops.REDUCING_GAP),
        dtype=np.int16,
    )
    fair = np.asarray(crop.resize((40, 40), Image.Resampling.BICUBIC), dtype=np.int16)
    assert np.abs(ours - gap).max() <= 2 and np.abs(ours - gap).mean() < 0.1
    assert np.abs(ours - fair).mean() < 1.0


def test_draft_size_keeps_every_crop_a_downscale():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 8)
    side = aug.draft_size
    assert side == max(
        int(np.ceil(224 / np.sqrt(0.4 * 0.75))), int(np.ceil(96 / np.sqrt(0.05 * 0.75)))
    )
    rng = np.random.default_rng(10)
    for height, width in [(side, side), (side, 3 * side), (2 * side, side)]:
        for view in aug.views[1:3]:
            for draws in rng.random((2000, 2 * CROP_ATTEMPTS + 2)):
                _, _, h, w = crop_box_from_draws(height, width, view.scale, CROP_RATIO, draws)
                assert min(h, w) >= view.size - 1  # -1: the box sides are rounded
