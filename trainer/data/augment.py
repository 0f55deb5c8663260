"""DINO multi-crop: the recipe shared by both paths, and the CPU path on PIL images.

Every image becomes ``2 + local_crops_number`` views, globals first. Each view is

    random resized crop (bicubic) -> horizontal flip (p=0.5)
    -> colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; random order; p=0.8)
    -> grayscale (p=0.2) -> Gaussian blur (sigma ~ U[0.1, 2]) -> solarize (threshold 128)
    -> to tensor -> ImageNet normalisation

with the blur applied with p=1.0 on global view 1, p=0.1 on global view 2 and p=0.5 on
every local view, and solarize only on global view 2 (p=0.2), as in Caron et al. 2021 and
the authors' ``DataAugmentationDINO``.

The probabilities live in :class:`ViewSpec` records built by :func:`dino_views`; the GPU
path (:mod:`trainer.data.gpu_augment`) uses the very same records, so both paths share one
source of truth. Every random decision goes through an optional ``record`` hook
(``record(view_name, op_name, value)``) so that tests can measure application rates.

The CPU path (:class:`DataAugmentationDINO`) stays on uint8 PIL images until one final
lookup-table conversion to a normalised tensor per view (:mod:`trainer.data.pil_ops`): the
pixels are those of the authors' torchvision ops, including PIL's own Gaussian blur and
solarize (the crop's bicubic resize within rounding). It draws an image's random numbers in
one call, box-averages large downscales first (PIL's ``reducing_gap``), and, through
:attr:`DataAugmentationDINO.draft_size`, lets the dataset decode large JPEGs at reduced
size (``Image.draft``) when every crop still has more source pixels than output pixels.
Set :attr:`DataAugmentationDINO.profile` to an :class:`OpProfile` to time each op;
``benchmarks/augment_throughput.py`` compares it with the authors' pipeline.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter

import torch
from PIL import Image

from trainer.data import pil_ops

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


def check_crop_scale(name: str, scale: tuple[float, float]) -> tuple[float, float]:
    """``scale`` as a validated float ``(min, max)`` pair with ``0 < min <= max <= 1``."""
    if len(scale) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {scale!r}")
    low = float(scale[0])
    high = float(scale[1])
    if not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
        raise ValueError(f"{name} values must lie in (0, 1], got {scale!r}")
    if low > high:
        raise ValueError(f"{name} must have min <= max, got {scale!r}")
    return low, high


def _check_positive_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def dino_views(
    global_crops_scale: tuple[float, float],
    local_crops_scale: tuple[float, float],
    local_crops_number: int,
    global_crops_size: int = 224,
    local_crops_size: int = 96,
) -> list[ViewSpec]:
    """The validated list of view specs, globals first: [global1, global2, local * N]."""
    global_scale = check_crop_scale("global_crops_scale", global_crops_scale)
    local_scale = check_crop_scale("local_crops_scale", local_crops_scale)
    _check_positive_int("local_crops_number", local_crops_number, 0)
    _check_positive_int("global_crops_size", global_crops_size, 1)
    _check_positive_int("local_crops_size", local_crops_size, 1)
    global1 = ViewSpec("global1", global_crops_size, global_scale, blur_p=GLOBAL1_BLUR_P)
    global2 = ViewSpec(
        "global2",
        global_crops_size,
        global_scale,
        blur_p=GLOBAL2_BLUR_P,
        solarize_p=GLOBAL2_SOLARIZE_P,
    )
    local = ViewSpec("local", local_crops_size, local_scale, blur_p=LOCAL_BLUR_P)
    return [global1, global2] + [local] * local_crops_number


# One view's random numbers, drawn in one call: crop tries (2 per try) and position (2), the
# five op decisions, the four jitter factors, the four keys of the jitter order, the blur sigma.
_CROP_DRAWS = 2 * CROP_ATTEMPTS + 2
_DECISIONS = ("flip", "jitter", "grayscale", "blur", "solarize")
_COIN = {op: _CROP_DRAWS + i for i, op in enumerate(_DECISIONS)}
_FACTORS = _CROP_DRAWS + 5
_ORDER_KEYS = _FACTORS + 4
_SIGMA = _ORDER_KEYS + 4
VIEW_DRAWS = _SIGMA + 1
_JITTER_RANGES = (
    (1 - BRIGHTNESS, 1 + BRIGHTNESS),
    (1 - CONTRAST, 1 + CONTRAST),
    (1 - SATURATION, 1 + SATURATION),
    (-HUE, HUE),
)
_JITTER_FUNCTIONS = (
    pil_ops.adjust_brightness,
    pil_ops.adjust_contrast,
    pil_ops.adjust_saturation,
    pil_ops.adjust_hue,
)


def _draws(count: int, generator: torch.Generator | None) -> list[float]:
    return torch.rand(count, generator=generator, dtype=torch.float64).tolist()


def crop_box_from_draws(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    draws: Sequence[float],
) -> tuple[int, int, int, int]:
    """(top, left, h, w): RandomResizedCrop's sampling and 10-try fallback, from U[0, 1) draws.

    ``draws`` holds ``2 * CROP_ATTEMPTS + 2`` numbers: (scale, log-ratio) per try, then top, left.
    """
    area = height * width
    log_low = math.log(ratio[0])
    log_high = math.log(ratio[1])
    for attempt in range(CROP_ATTEMPTS):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[2 * attempt])
        aspect = math.exp(log_low + (log_high - log_low) * draws[2 * attempt + 1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(draws[2 * CROP_ATTEMPTS] * (height - h + 1))
            left = int(draws[2 * CROP_ATTEMPTS + 1] * (width - w + 1))
            return top, left, h, w
    return fallback_crop_box(height, width, ratio)


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one random resized crop (see :func:`crop_box_from_draws`)."""
    return crop_box_from_draws(height, width, scale, ratio, _draws(_CROP_DRAWS, generator))


def fallback_crop_box(
    height: int, width: int, ratio: tuple[float, float] = CROP_RATIO
) -> tuple[int, int, int, int]:
    """Central crop used when all tries fail: the whole image, clipped to the allowed ratio."""
    in_ratio = width / height
    w = round(height * max(ratio)) if in_ratio > max(ratio) else width
    h = round(width / min(ratio)) if in_ratio < min(ratio) else height
    return (height - h) // 2, (width - w) // 2, h, w


def jitter_order(keys: Sequence[float]) -> list[int]:
    """A uniformly random order of the four jitter ops (indices into ``JITTER_OPS``)."""
    return sorted(range(len(JITTER_OPS)), key=lambda op: keys[op])


@dataclass
class OpProfile:
    """Seconds and calls per op name, filled by a multi-crop whose ``profile`` is set.

    ``clock`` is wall time by default; ``time.process_time`` counts only this process's CPU
    time, which a busy machine disturbs less.
    """

    clock: Callable[[], float] = perf_counter
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def lap(self, op: str, start: float) -> float:
        """Charge the time since ``start`` to ``op``; return now (the next op's start)."""
        now = self.clock()
        self.seconds[op] += now - start
        self.calls[op] += 1
        return now

    def milliseconds(self, per: int = 1) -> dict[str, float]:
        """Milliseconds per op, divided by ``per`` (e.g. the number of images)."""
        return {op: 1000.0 * seconds / per for op, seconds in self.seconds.items()}


class _NoProfile:
    """Stands in for an :class:`OpProfile` when none is set: no clock reads, nothing kept."""

    @staticmethod
    def clock() -> float:
        return 0.0

    @staticmethod
    def lap(op: str, start: float) -> float:
        return 0.0


_NO_PROFILE = _NoProfile()


class DataAugmentationDINO:
    """Callable turning one PIL image into the list of DINO views (globals first).

    ``views`` (a list of :class:`ViewSpec`) may be replaced, e.g. to switch an op off in a
    test; ``record`` is an optional hook called as ``record(view_name, op_name, value)``
    for every random decision (``value`` is a bool, or the crop box for ``"crop"``);
    ``profile`` (an :class:`OpProfile`) collects the time spent in each op.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float],
        local_crops_scale: tuple[float, float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
    ) -> None:
        self.views = dino_views(
            global_crops_scale,
            local_crops_scale,
            local_crops_number,
            global_crops_size,
            local_crops_size,
        )
        self.record: Recorder | None = None
        self.profile: OpProfile | None = None

    @property
    def draft_size(self) -> int:
        """The short side a JPEG may be decoded down to (``Image.draft``) without changing crops.

        A crop of area fraction ``s`` and aspect ratio in ``CROP_RATIO`` has a short side of
        at least ``sqrt(s * 3/4)`` times the image's short side; at this size or larger, the
        smallest crop of every view still has at least as many pixels as the view.
        """
        return max(math.ceil(v.size / math.sqrt(v.scale[0] * min(CROP_RATIO))) for v in self.views)

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        draws = _draws(VIEW_DRAWS * len(self.views), generator)
        profile = self.profile if self.profile is not None else _NO_PROFILE
        start = profile.clock()
        pixels = pil_ops.image_pixels(image)
        profile.lap("crop", start)
        return [
            self._augment(image, pixels, view, draws[i * VIEW_DRAWS : (i + 1) * VIEW_DRAWS])
            for i, view in enumerate(self.views)
        ]

    def _decide(self, view: ViewSpec, op: str, p: float, draws: list[float]) -> bool:
        applied = draws[_COIN[op]] < p
        if self.record is not None:
            self.record(view.name, op, applied)
        return applied

    def _augment(
        self, image: Image.Image, pixels: torch.Tensor, view: ViewSpec, draws: list[float]
    ) -> torch.Tensor:
        profile = self.profile if self.profile is not None else _NO_PROFILE
        start = profile.clock()
        box = crop_box_from_draws(image.height, image.width, view.scale, CROP_RATIO, draws)
        if self.record is not None:
            self.record(view.name, "crop", box)
        out = pil_ops.resized_crop(image, pixels, box, view.size)
        start = profile.lap("crop", start)
        if self._decide(view, "flip", view.flip_p, draws):
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            start = profile.lap("flip", start)
        if self._decide(view, "jitter", view.jitter_p, draws):
            for op in jitter_order(draws[_ORDER_KEYS : _ORDER_KEYS + 4]):
                low, high = _JITTER_RANGES[op]
                out = _JITTER_FUNCTIONS[op](out, low + (high - low) * draws[_FACTORS + op])
                start = profile.lap(JITTER_OPS[op], start)
        if self._decide(view, "grayscale", view.grayscale_p, draws):
            out = pil_ops.grayscale(out)
            start = profile.lap("grayscale", start)
        if self._decide(view, "blur", view.blur_p, draws):
            sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * draws[_SIGMA]
            out = pil_ops.gaussian_blur(out, sigma)
            start = profile.lap("blur", start)
        if self._decide(view, "solarize", view.solarize_p, draws):
            out = pil_ops.solarize(out)
            start = profile.lap("solarize", start)
        tensor = pil_ops.to_normalized_tensor(out)
        profile.lap("to_tensor", start)
        return tensor
