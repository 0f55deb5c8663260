"""Batched multi-crop (trainer/data/gpu_augment.py and its ops in gpu_crops.py, gpu_color.py,
gpu_blur.py) and batched decoding (trainer/data/jpeg_batch.py).

Run on CPU tensors; the same code runs on CUDA.
"""

from __future__ import annotations

import io
import itertools
import math
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from tests.test_augment import EXPECTED_RATES
from trainer.data.augment import CROP_RATIO, DataAugmentationDINO
from trainer.data.gpu_augment import GPUMultiCrop
from trainer.data.gpu_blur import BLUR_MAX_KERNEL, blur_kernel_size, gaussian_blur
from trainer.data.gpu_color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    color_jitter,
    sample_jitter,
)
from trainer.data.gpu_crops import resized_crops, sample_crop_boxes
from trainer.data.jpeg_batch import (
    EncodedImageFolder,
    collate_bytes,
    decode_jpegs,
    decode_with_pil,
    drop_undecoded,
)
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_images(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 (count,3,H,W) images: random colour blobs (low-frequency, natural-ish statistics)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((count, 3, 4, 4), generator=generator) * 255
    return (
        torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
        .round()
        .to(torch.uint8)
    )


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def all_off(views):
    return [
        replace(v, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        for v in views
    ]


def test_shapes_dtypes_and_view_order_for_list_and_batch_inputs():
    aug = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 3, global_crops_size=16, local_crops_size=8)
    images = [
        torch.randint(0, 256, (3, 20 + 3 * i, 30 - 2 * i), dtype=torch.uint8) for i in range(5)
    ]
    for source in (images, torch.stack([torch.zeros((3, 24, 24), dtype=torch.uint8)] * 5)):
        views = aug(source, torch.Generator().manual_seed(0))
        assert [tuple(v.shape) for v in views] == [(5, 3, 16, 16)] * 2 + [(5, 3, 8, 8)] * 3
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_crops_of_mixed_size_images_never_read_the_padding():
    aug = GPUMultiCrop((0.05, 1.0), (0.05, 0.4), 2, 16, 8)
    aug.views = all_off(aug.views)
    images = [
        torch.full((3, h, w), 200, dtype=torch.uint8)
        for h, w in [(10, 60), (64, 12), (33, 35), (20, 20)] * 8
    ]
    for view in aug(images, torch.Generator().manual_seed(20)):
        torch.testing.assert_close(
            unnormalise(view), torch.full_like(view, 200 / 255), atol=1e-5, rtol=0
        )


def test_same_generator_seed_gives_the_same_views():
    aug = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 2, 16, 8)
    images = smooth_images(6, 20, 24, seed=21)
    first = aug(images, torch.Generator().manual_seed(22))
    again = aug(images, torch.Generator().manual_seed(22))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_runs_in_float32_inside_a_training_autocast():
    aug = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 1, 16, 8)
    images = smooth_images(4, 20, 24, seed=23)
    plain = aug(images, torch.Generator().manual_seed(24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = aug(images, torch.Generator().manual_seed(24))
    assert all(
        a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(autocast, plain, strict=True)
    )


def test_rejects_non_uint8_and_empty_inputs():
    aug = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 1, 16, 8)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"images\[1\] must be a uint8 \(3,H,W\)"):
        aug([torch.zeros((3, 9, 9), dtype=torch.uint8), torch.zeros((1, 9, 9), dtype=torch.uint8)])
    with pytest.raises(ValueError, match="empty"):
        aug([])


def test_parameters_are_independent_per_sample_and_per_view():
    aug = GPUMultiCrop((0.3, 1.0), (0.05, 0.4), 2, 16, 8)
    boxes: dict[str, list[torch.Tensor]] = defaultdict(list)
    aug.record = lambda view, op, value: boxes[view].append(value) if op == "crop" else None
    same = smooth_images(1, 40, 40, seed=1).expand(16, -1, -1, -1).contiguous()
    views = aug(same, torch.Generator().manual_seed(2))
    for view in views:  # every copy of the same image is augmented differently
        flat = view.flatten(1)
        assert torch.cdist(flat, flat).add(torch.eye(16) * 1e9).min() > 1e-3
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[2], views[3])
    for name in ("global1", "global2", "local"):
        for view_boxes in boxes[name]:
            assert len({tuple(b.tolist()) for b in view_boxes}) > 12
    assert not torch.equal(boxes["global1"][0], boxes["global2"][0])
    assert not torch.equal(boxes["local"][0], boxes["local"][1])


@pytest.mark.parametrize(("height", "width"), [(48, 64), (12, 90)])
def test_crop_sampler_matches_torchvision_histograms(height, width):
    scale, n_ref, n_ours = (0.08, 1.0), 1500, 6000
    torch.manual_seed(3)
    reference = np.array(
        [
            RandomResizedCrop.get_params(
                torch.empty(3, height, width), list(scale), list(CROP_RATIO)
            )
            for _ in range(n_ref)
        ],
        dtype=float,
    )
    sizes = torch.full((n_ours,), height), torch.full((n_ours,), width)
    ours = sample_crop_boxes(*sizes, scale, CROP_RATIO, torch.Generator().manual_seed(4)).numpy()
    assert np.all(ours[:, 0] >= 0) and np.all(ours[:, 0] + ours[:, 2] <= height)
    assert np.all(ours[:, 1] >= 0) and np.all(ours[:, 1] + ours[:, 3] <= width)
    assert np.all(ours == np.round(ours))
    features = [
        (lambda b: b[:, 2] * b[:, 3] / (height * width), np.linspace(0.0, 1.0, 11)),  # crop scale
        (lambda b: np.log(b[:, 3] / b[:, 2]), np.linspace(-0.45, 0.45, 10)),  # log aspect ratio
        (lambda b: (b[:, 1] + b[:, 3] / 2) / width, np.linspace(0.0, 1.0, 6)),  # horizontal centre
    ]
    for feature, edges in features:
        p_ref = np.histogram(feature(reference), bins=edges)[0] / n_ref
        p_ours = np.histogram(feature(ours), bins=edges)[0] / n_ours
        tolerance = 5 * np.sqrt(
            np.maximum(p_ref, 1 / n_ref) * (1 - p_ref) * (1 / n_ref + 1 / n_ours)
        )
        assert np.all(np.abs(p_ref - p_ours) <= tolerance), (p_ref, p_ours)


def test_resized_crops_match_pil_crop_and_bicubic_resize():
    image = smooth_images(1, 37, 53, seed=5)[0]
    image = image.int() + torch.randint(
        -30, 31, image.shape, generator=torch.Generator().manual_seed(6)
    )
    image = image.clamp(0, 255).to(torch.uint8)
    boxes = torch.tensor(
        [[3.0, 5.0, 30.0, 41.0], [10.0, 0.0, 6.0, 7.0], [0.0, 0.0, 37.0, 53.0]], dtype=torch.float64
    )
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    for size in (9, 16):
        ours = resized_crops(image[None], boxes, size)
        for row, (top, left, h, w) in enumerate(boxes.int().tolist()):
            reference = (
                TF.pil_to_tensor(
                    TF.resized_crop(pil, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
                ).float()
                / 255
            )
            assert (ours[row] - reference).abs().max() < 3.5 / 255, (size, row)
            assert (ours[row] - reference).abs().mean() < 0.6 / 255, (size, row)


def test_colour_ops_match_torchvision_formulas_per_row():
    x = torch.rand((4, 3, 6, 7), generator=torch.Generator().manual_seed(7))
    factors = torch.tensor([0.6, 0.93, 1.2, 1.4])
    shifts = torch.tensor([-0.1, -0.02, 0.05, 0.1])
    for row in range(4):
        f, s = float(factors[row]), float(shifts[row])
        torch.testing.assert_close(
            adjust_brightness(x, factors)[row], TF.adjust_brightness(x[row], f)
        )
        torch.testing.assert_close(adjust_contrast(x, factors)[row], TF.adjust_contrast(x[row], f))
        torch.testing.assert_close(
            adjust_saturation(x, factors)[row], TF.adjust_saturation(x[row], f)
        )
        torch.testing.assert_close(
            adjust_hue(x, shifts)[row], TF.adjust_hue(x[row], s), atol=2e-6, rtol=0
        )


def _reference_jitter(image: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """One image through torchvision's own functional ops, one at a time, in the given order."""
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in order:
        image = ops[op](image, factors[op])
    return image


def test_colour_jitter_follows_each_samples_order_and_factors():
    """Every one of the 24 orders, each row with its own factors, against a per-row reference."""
    orders = torch.tensor(list(itertools.permutations(range(4))) * 2)
    n = len(orders)
    x = textured_images(n, 9, 11, seed=30).float() / 255
    generator = torch.Generator().manual_seed(31)
    factors = torch.stack(
        [
            torch.empty(n).uniform_(0.6, 1.4, generator=generator),
            torch.empty(n).uniform_(0.6, 1.4, generator=generator),
            torch.empty(n).uniform_(0.8, 1.2, generator=generator),
            torch.empty(n).uniform_(-0.1, 0.1, generator=generator),
        ],
        dim=1,
    )
    apply = torch.arange(n) % 5 != 0
    out = apply_color_jitter(x, apply, factors, orders)
    for row in range(n):
        expected = (
            _reference_jitter(x[row], factors[row].tolist(), orders[row].tolist())
            if apply[row]
            else x[row]
        )
        torch.testing.assert_close(out[row], expected, atol=2e-6, rtol=0)
    # the order matters: running every row in one fixed order gives other pixels
    fixed = apply_color_jitter(x, apply, factors, torch.arange(4).expand(n, 4))
    assert (fixed - out).abs().amax(dim=(1, 2, 3))[apply].gt(1e-3).float().mean() > 0.5


def test_jitter_parameters_are_uniform_per_sample():
    n = 24_000
    factors, order = sample_jitter(n, torch.device("cpu"), torch.Generator().manual_seed(32))
    for k, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert factors[:, k].min() >= low and factors[:, k].max() <= high
        assert abs(factors[:, k].mean().item() - (low + high) / 2) < 5 * (high - low) / math.sqrt(
            12 * n
        )
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and (counts - n / 24).abs().max() < 5 * math.sqrt(n / 24)
    assert torch.corrcoef(factors.T).sub(torch.eye(4)).abs().max() < 0.05  # independent factors
    x = smooth_images(4, 6, 6, seed=33).float() / 255
    again = color_jitter(x, torch.ones(4, dtype=torch.bool), torch.Generator().manual_seed(34))
    factors, order = sample_jitter(4, torch.device("cpu"), torch.Generator().manual_seed(34))
    torch.testing.assert_close(
        again, apply_color_jitter(x, torch.ones(4, dtype=torch.bool), factors, order)
    )


def _recorded_run(aug: GPUMultiCrop, images: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """The views and, per (view name, op), the concatenated per-sample decision masks."""
    masks: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    aug.record = lambda view, op, value: masks[(view, op)].append(value) if op != "crop" else None
    views = aug(images, torch.Generator().manual_seed(8))
    return views, {key: torch.cat(values) for key, values in masks.items()}


def test_application_rates_match_the_cpu_recipe():
    aug = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 2, 8, 4)
    _, masks = _recorded_run(aug, smooth_images(1500, 12, 12, seed=9))
    for op, probabilities in EXPECTED_RATES.items():
        for view, p in zip(("global1", "global2", "local"), probabilities, strict=True):
            mask = masks[(view, op)]
            assert mask.dtype == torch.bool and len(mask) == (3000 if view == "local" else 1500)
            rate = mask.float().mean().item()
            assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / len(mask)), (view, op, rate, p)


def test_recorded_decisions_are_the_applied_ops():
    aug = GPUMultiCrop((1.0, 1.0), (1.0, 1.0), 0, 12, 12)
    checker = (torch.arange(12)[:, None] + torch.arange(12)[None, :]) % 2 * 200 + 20
    gradient = torch.arange(12).repeat(12, 1) * 20
    image = torch.stack([checker, gradient, 255 - gradient]).to(torch.uint8)
    images = image[None].expand(400, -1, -1, -1).contiguous()
    reference_aug = GPUMultiCrop((1.0, 1.0), (1.0, 1.0), 0, 12, 12)
    reference_aug.views = all_off(reference_aug.views)
    plain = unnormalise(reference_aug(images[:1])[0])[0]
    assert torch.allclose(
        plain * 255, image.float(), atol=1e-3
    )  # full-image box at full size is the identity
    for op, check in {
        "flip": lambda out: torch.isclose(out, plain.flip(-1), atol=1e-4).all(dim=(1, 2, 3)),
        "grayscale": lambda out: (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-5,
        "blur": lambda out: ~torch.isclose(out, plain, atol=1e-6).all(dim=(1, 2, 3)),
        "solarize": lambda out: torch.isclose(
            out, torch.where(plain >= 128 / 255, 1 - plain, plain), atol=1e-4
        ).all(dim=(1, 2, 3)),
    }.items():
        aug.views = [replace(v, **{f"{op}_p": 0.5}) for v in all_off(aug.views)]
        views, masks = _recorded_run(aug, images)
        out = unnormalise(views[0])
        applied = masks[("global1", op)]
        assert 100 < applied.sum() < 300
        if op == "blur":  # sigma near 0.1 leaves the image unchanged within float precision
            changed = check(out)
            assert not changed[~applied].any() and changed[applied].float().mean() > 0.9
        else:
            assert torch.equal(check(out), applied), op


def textured_images(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Colour blobs plus pixel noise, so that blur and resampling change the statistics."""
    noise = torch.randint(
        -40, 41, (count, 3, height, width), generator=torch.Generator().manual_seed(seed + 1)
    )
    return (smooth_images(count, height, width, seed).int() + noise).clamp(0, 255).to(torch.uint8)


def _view_statistics(views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample brightness, contrast, colour and sharpness of each view kind (locals pooled)."""
    kinds = {"global1": [views[0]], "global2": [views[1]], "local": views[2:]}
    stats = {}
    for kind, tensors in kinds.items():
        batch = torch.cat(tensors)
        stats[f"{kind}/mean"] = batch.mean(dim=(1, 2, 3))
        stats[f"{kind}/std"] = batch.std(dim=(1, 2, 3))
        stats[f"{kind}/channel-spread"] = batch.mean(dim=(2, 3)).std(dim=1)
        stats[f"{kind}/sharpness"] = (batch[..., 1:] - batch[..., :-1]).abs().mean(dim=(1, 2, 3))
    return stats


def test_output_statistics_match_the_cpu_pipeline():
    """Mean and spread of each per-sample statistic agree within 4.5 standard errors."""
    images = textured_images(40, 30, 36, seed=10).repeat(8, 1, 1, 1)
    cpu_aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 2, 16, 8)
    generator = torch.Generator().manual_seed(11)
    cpu_views = [
        cpu_aug(Image.fromarray(image.permute(1, 2, 0).numpy()), generator) for image in images
    ]
    cpu = _view_statistics([torch.stack([views[k] for views in cpu_views]) for k in range(4)])
    gpu = _view_statistics(
        GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 2, 16, 8)(images, torch.Generator().manual_seed(12))
    )
    for key in cpu:
        a, b = cpu[key], gpu[key]
        mean_error = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
        assert abs(a.mean().item() - b.mean().item()) < 4.5 * mean_error, key
        log_std_error = math.sqrt(1 / (2 * len(a)) + 1 / (2 * len(b)))
        assert abs(math.log(a.std().item() / b.std().item())) < 4.5 * log_std_error, key


def jpeg_bytes(image: torch.Tensor, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_decode_jpegs_on_cpu_matches_pil_and_skips_corrupt_blobs():
    images = smooth_images(3, 24, 40, seed=13)
    blobs = [jpeg_bytes(image) for image in images]
    png = io.BytesIO()
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(png, format="PNG")
    corrupt = [b"not an image at all", blobs[0][: len(blobs[0]) // 3], b""]
    decoded = decode_jpegs(blobs + [png.getvalue()] + corrupt, "cpu")
    for blob, image, original in zip(blobs, decoded, images, strict=False):
        reference = torch.from_numpy(np.array(Image.open(io.BytesIO(blob)).convert("RGB"))).permute(
            2, 0, 1
        )
        assert image.dtype == torch.uint8 and torch.equal(image, reference)
        assert (image.float() - original.float()).abs().mean() < 3
    assert torch.equal(decoded[3], images[0])
    assert decoded[4:] == [None, None, None]
    kept, indices, dropped = drop_undecoded(decoded, torch.arange(7))
    assert len(kept) == 4 and indices.tolist() == [0, 1, 2, 3] and dropped == 3


def test_draft_decodes_large_jpegs_at_reduced_size_but_not_below_the_target():
    big = smooth_images(1, 256, 320, seed=14)[0]
    blob = jpeg_bytes(big)
    reduced = decode_with_pil(blob, draft_size=60)
    assert tuple(reduced.shape) == (3, 64, 80)
    assert tuple(decode_with_pil(blob, draft_size=200).shape) == (3, 256, 320)
    assert tuple(decode_with_pil(blob).shape) == (3, 256, 320)
    expected = TF.resize(big, [64, 80], antialias=True).float()
    assert (reduced.float() - expected).abs().mean() < 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvjpeg needs CUDA")
def test_decode_jpegs_on_cuda_matches_pil():
    images = smooth_images(4, 33, 47, seed=15)
    blobs = [jpeg_bytes(image) for image in images] + [b"\xff\xd8\xff broken"]
    decoded = decode_jpegs(blobs, "cuda")
    assert decoded[-1] is None
    for blob, image in zip(blobs, decoded, strict=False):
        assert image.device.type == "cuda"
        assert (image.cpu().float() - decode_with_pil(blob).float()).abs().mean() < 1.5


def test_encoded_image_folder_yields_bytes_for_a_dataloader(tmp_path):
    images = smooth_images(3, 16, 16, seed=16)
    for index, image in enumerate(images):
        folder = tmp_path / f"class{index % 2}"
        folder.mkdir(exist_ok=True)
        (folder / f"img{index}.jpg").write_bytes(jpeg_bytes(image))
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = EncodedImageFolder(tmp_path)
    assert len(dataset) == 3
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_bytes)))
    blobs = batch.images
    assert batch.labels.tolist() == [0, 1, 2] and all(isinstance(b, bytes) for b in blobs)
    assert batch.skipped == 0
    unreadable = collate_bytes(
        [(blobs[0], 0), (b"", 1), (blobs[2], 2)]
    )  # a file that could not be read
    assert unreadable.labels.tolist() == [0, 2] and unreadable.images == [blobs[0], blobs[2]]
    assert unreadable.skipped == 1
    assert all(image is not None for image in decode_jpegs(blobs, "cpu"))
    samples = [(path, 7) for path in dataset.paths[::-1]]
    from_samples = EncodedImageFolder(samples)
    assert from_samples.paths == dataset.paths[::-1] and from_samples[0] == (
        dataset.paths[-1].read_bytes(),
        0,
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        EncodedImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EncodedImageFolder(tmp_path / "missing")


def test_blur_kernel_covers_three_sigma_and_fits_small_crops():
    assert BLUR_MAX_KERNEL >= 2 * math.ceil(3 * 2.0) + 1
    assert blur_kernel_size(224) == BLUR_MAX_KERNEL and blur_kernel_size(96) == BLUR_MAX_KERNEL
    assert blur_kernel_size(4) == 7 and blur_kernel_size(1) == 1
    assert all(blur_kernel_size(s) % 2 == 1 for s in range(1, 50))


def _reference_blur(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    """2-D Gaussian G(x, y) ~ exp(-(x^2 + y^2) / (2 sigma^2)), normalised, reflect-padded."""
    half = kernel_size // 2
    taps = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-(taps[:, None] ** 2 + taps[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((0, 0), (half, half), (half, half)), mode="reflect")
    out = np.zeros_like(image, dtype=np.float64)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            out += kernel[dy, dx] * padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
    return out


def test_gaussian_blur_matches_the_gaussian_equation_per_row():
    rng = np.random.default_rng(7)
    images = rng.random((3, 3, 10, 12))
    sigmas = [0.1, 0.9, 2.0]
    out = gaussian_blur(torch.tensor(images, dtype=torch.float32), torch.tensor(sigmas), 13).numpy()
    for row, sigma in enumerate(sigmas):
        np.testing.assert_allclose(out[row], _reference_blur(images[row], sigma, 13), atol=1e-5)
    assert out[2].std() < images[2].std() * 0.6
