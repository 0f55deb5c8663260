"""trainer/data/hue_lut.py against PIL: both HSV conversions on every one of the 2^24 inputs.

torchvision's ``adjust_hue`` is PIL's RGB -> HSV, a uint8 add on the hue band, PIL's
HSV -> RGB. Equal conversions on all inputs (and the same wrapping add) mean equal pixels for
every image and every hue factor; the random-image tests check the composition itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image

from trainer.data import hue_lut, pil_ops

CHUNK = 16  # values of the first channel per chunk: 16 * 65536 = 1M pixels


@pytest.fixture(scope="module")
def tables() -> hue_lut.HueTables:
    built = hue_lut.tables()
    assert built is not None, "the tables must reproduce the installed PIL"
    return built


def _all_pairs() -> tuple[np.ndarray, np.ndarray]:
    second, third = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    return second.reshape(-1).astype(np.uint8), third.reshape(-1).astype(np.uint8)


def _chunks():
    second, third = _all_pairs()
    for start in range(0, 256, CHUNK):
        first = np.repeat(np.arange(start, start + CHUNK, dtype=np.uint8), second.size)
        yield first, np.tile(second, CHUNK), np.tile(third, CHUNK)


def _pil(planes: tuple[np.ndarray, ...], mode: str, target: str) -> np.ndarray:
    pixels = np.stack(planes, -1)[None]
    return np.asarray(Image.fromarray(pixels, mode).convert(target))[0]


def test_rgb_to_hsv_is_pils_on_every_colour(tables):
    for r, g, b in _chunks():
        ours = np.stack(hue_lut.rgb_to_hsv(np.stack([r, g, b]), tables), -1)
        expected = _pil((r, g, b), "RGB", "HSV")
        bad = np.flatnonzero((ours != expected).any(-1))
        assert bad.size == 0, (r[bad[:3]], g[bad[:3]], b[bad[:3]], ours[bad[:3]])


def test_hsv_to_rgb_is_pils_on_every_hsv_triple(tables):
    for h, s, v in _chunks():
        ours = hue_lut.hsv_to_rgb(h, s, v, tables).T
        expected = _pil((h, s, v), "HSV", "RGB")
        bad = np.flatnonzero((ours != expected).any(-1))
        assert bad.size == 0, (h[bad[:3]], s[bad[:3]], v[bad[:3]], ours[bad[:3]])


def _random_photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:  # uniform noise: every hue, saturation and value
        pixels = rng.integers(0, 256, (height, width, 3))
    elif kind == 1:  # smooth colour regions with mild noise, as in photos
        coarse = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))
        pixels = smooth.astype(np.int16) + rng.integers(-8, 9, (height, width, 3))
    else:  # near-greys and ties between channels (equal maxima, s = 0 and s = 1 edges)
        grey = rng.integers(0, 256, (height, width, 1))
        pixels = grey + rng.integers(-2, 3, (height, width, 3)) * rng.integers(0, 2, (1, 1, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("seed", range(6))
def test_adjust_hue_equals_torchvision_on_random_images_and_factors(seed):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        height, width = (int(n) for n in rng.integers(1, 120, 2))
        image = _random_photo(rng, height, width)
        for factor in [*rng.uniform(-0.5, 0.5, 6), *rng.uniform(-0.1, 0.1, 6), -0.5, 0.0, 0.5]:
            ours = pil_ops.adjust_hue(image, float(factor))
            expected = TF.adjust_hue(image, float(factor))
            assert ours.mode == expected.mode == "RGB" and ours.size == expected.size
            assert np.array_equal(np.asarray(ours), np.asarray(expected)), (seed, factor)


def test_every_step_of_the_hue_band_matches_pil(tables):
    image = _random_photo(np.random.default_rng(7), 64, 80)
    hsv = np.asarray(image.convert("HSV"))
    for step in range(256):
        shifted = hsv.copy()
        shifted[..., 0] += np.uint8(step)
        expected = np.asarray(Image.fromarray(shifted, "HSV").convert("RGB"))
        assert np.array_equal(np.asarray(hue_lut.rotate_hue(image, step, tables)), expected)


def test_single_band_images_are_left_unchanged_as_torchvision_does():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert pil_ops.adjust_hue(gray, 0.1) is gray
    assert TF.adjust_hue(gray, 0.1) is gray


def test_tables_are_built_once_and_checked_against_pil(tables):
    assert hue_lut.tables() is tables
    assert tables.hue.shape == (6 * 32896,) and tables.middle.shape == (256 * 256,)
    assert tables.bounds[:, 0].tolist() == [43, 85, 128, 170, 213, 0]  # ceil(255 k / 6)
    assert hue_lut._agrees_with_pil(tables)
    broken = tables._replace(middle=tables.middle * 0.99)
    assert not hue_lut._agrees_with_pil(broken)
