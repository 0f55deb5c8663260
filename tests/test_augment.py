"""DINO multi-crop augmentation on PIL images (trainer/data/augment.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from trainer.data.augment import (
    CROP_RATIO,
    DataAugmentationDINO,
    dino_views,
    sample_crop_box,
)
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

EXPECTED_RATES = {
    # op: (global1, global2, local) probabilities from the paper / authors' recipe
    "flip": (0.5, 0.5, 0.5),
    "jitter": (0.8, 0.8, 0.8),
    "grayscale": (0.2, 0.2, 0.2),
    "blur": (1.0, 0.1, 0.5),
    "solarize": (0.0, 0.2, 0.0),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_image(height: int = 32, width: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def constant_image(value: tuple[int, int, int], size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), value)


def normalised(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(
        [(c - m) / s for c, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )


def binomial_ok(successes: int, n: int, p: float, sds: float = 5.0) -> bool:
    if p in (0.0, 1.0):
        return successes == n * p
    return abs(successes / n - p) <= sds * math.sqrt(p * (1 - p) / n)


def test_view_count_sizes_and_order():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 3, global_crops_size=16, local_crops_size=8)
    views = aug(random_image(), torch.Generator().manual_seed(0))
    assert len(views) == 5
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    assert [v.name for v in aug.views] == ["global1", "global2", "local", "local", "local"]


def test_same_generator_seed_gives_the_same_views():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 2, 16, 8)
    first = aug(random_image(seed=1), torch.Generator().manual_seed(9))
    again = aug(random_image(seed=1), torch.Generator().manual_seed(9))
    other = aug(random_image(seed=1), torch.Generator().manual_seed(10))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_grayscale_input_is_converted_to_rgb():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 0, 16, 8)
    views = aug(Image.new("L", (20, 20), 90))
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_crops_scale": (0.0, 1.0)}, "global_crops_scale values must lie in"),
        ({"global_crops_scale": (0.5, 1.5)}, "global_crops_scale values must lie in"),
        ({"local_crops_scale": (0.4, 0.05)}, "min <= max"),
        ({"local_crops_scale": (0.4,)}, "(min, max) pair"),
        ({"local_crops_number": -1}, "local_crops_number must be an integer >= 0"),
        ({"global_crops_size": 0}, "global_crops_size must be an integer >= 1"),
        ({"local_crops_size": 2.5}, "local_crops_size must be an integer >= 1"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    args = {
        "global_crops_scale": (0.4, 1.0),
        "local_crops_scale": (0.05, 0.4),
        "local_crops_number": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataAugmentationDINO(**args)


def test_constant_grey_maps_to_imagenet_normalised_value_without_jitter():
    aug = DataAugmentationDINO((0.3, 1.0), (0.1, 0.5), 2, 16, 8)
    aug.views = [replace(v, jitter_p=0.0) for v in aug.views]
    expected = normalised((100 / 255,) * 3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        for view in aug(constant_image((100, 100, 100)), generator):
            assert torch.allclose(view, expected.view(3, 1, 1).expand_as(view), atol=1e-5)


def test_solarize_inverts_bright_pixels_exactly_when_recorded():
    aug = DataAugmentationDINO((0.3, 1.0), (0.1, 0.5), 1, 16, 8)
    aug.views = [replace(v, jitter_p=0.0, grayscale_p=0.0) for v in aug.views]
    decisions: list[bool] = []
    aug.record = lambda view, op, value: (
        decisions.append(value) if (view, op) == ("global2", "solarize") else None
    )
    generator = torch.Generator().manual_seed(2)
    bright, inverted = normalised((200 / 255,) * 3), normalised((55 / 255,) * 3)
    for _ in range(40):
        global2 = aug(constant_image((200, 200, 200)), generator)[1]
        expected = inverted if decisions[-1] else bright
        assert torch.allclose(global2[:, 0, 0], expected, atol=1e-5)
    assert 0 < sum(decisions) < len(decisions)


def test_flip_mirrors_the_crop():
    gradient = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    aug = DataAugmentationDINO((1.0, 1.0), (1.0, 1.0), 0, 32, 32)
    off = [
        replace(v, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        for v in aug.views
    ]
    aug.views = off
    plain = aug(Image.fromarray(gradient), torch.Generator().manual_seed(3))[0]
    aug.views = [replace(v, flip_p=1.0) for v in off]
    flipped = aug(Image.fromarray(gradient), torch.Generator().manual_seed(3))[0]
    assert torch.allclose(flipped, plain.flip(-1))
    assert plain[0, 0, -1] > plain[0, 0, 0]


def test_application_rates_match_the_recipe():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 2, 8, 4)
    counts: dict[tuple[str, str], list[bool]] = defaultdict(list)
    aug.record = lambda view, op, value: counts[(view, op)].append(value) if op != "crop" else None
    generator, image = torch.Generator().manual_seed(4), random_image(16, 16)
    for _ in range(300):
        aug(image, generator)
    for op, probabilities in EXPECTED_RATES.items():
        for view, p in zip(("global1", "global2", "local"), probabilities, strict=True):
            decisions = counts[(view, op)]
            assert len(decisions) == (600 if view == "local" else 300)
            assert binomial_ok(sum(decisions), len(decisions), p), (
                view,
                op,
                sum(decisions) / len(decisions),
                p,
            )


def test_views_share_module_probabilities():
    views = dino_views((0.4, 1.0), (0.05, 0.4), 1)
    rates = {op: tuple(getattr(v, f"{op}_p") for v in views) for op in EXPECTED_RATES}
    assert rates == EXPECTED_RATES
    assert views[0].size == 224 and views[2].size == 96


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(values, bins=edges)[0] / len(values)


@pytest.mark.parametrize(("height", "width"), [(48, 64), (12, 90)])
def test_crop_sampler_matches_torchvision_random_resized_crop(height, width):
    scale, n = (0.08, 1.0), 1500
    torch.manual_seed(5)
    reference = [
        RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), list(CROP_RATIO))
        for _ in range(n)
    ]
    generator = torch.Generator().manual_seed(6)
    ours = [sample_crop_box(height, width, scale, CROP_RATIO, generator) for _ in range(n)]
    for boxes in (reference, ours):
        for top, left, h, w in boxes:
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    ref, mine = np.array(reference, dtype=float), np.array(ours, dtype=float)
    features = [
        (lambda b: b[:, 2] * b[:, 3] / (height * width), np.linspace(0.0, 1.0, 11)),  # crop scale
        (lambda b: np.log(b[:, 3] / b[:, 2]), np.linspace(-0.45, 0.45, 10)),  # log aspect ratio
    ]
    for feature, edges in features:
        p_ref, p_mine = _binned(feature(ref), edges), _binned(feature(mine), edges)
        assert p_ref.sum() > 0.99 and p_mine.sum() > 0.99
        tolerance = 5 * np.sqrt(2 * np.maximum(p_ref, 1 / n) * (1 - p_ref) / n)
        assert np.all(np.abs(p_ref - p_mine) <= tolerance), (p_ref, p_mine)
    centre_ref = np.mean(ref[:, 1] + ref[:, 3] / 2) / width
    assert abs(np.mean(mine[:, 1] + mine[:, 3] / 2) / width - centre_ref) < 0.03


def test_crop_fallback_is_a_central_ratio_clipped_crop():
    # with scale (1, 1) no crop of ratio in [3/4, 4/3] fits a 4x100 image, so every try fails
    assert sample_crop_box(4, 100, (1.0, 1.0)) == (0, 47, 4, 5)
    assert sample_crop_box(100, 4, (1.0, 1.0)) == (47, 0, 5, 4)
    assert sample_crop_box(30, 30, (1.0, 1.0)) == (0, 0, 30, 30)
