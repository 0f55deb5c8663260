"""PIL's hue rotation of an RGB image, computed on uint8 planes with small lookup tables.

torchvision's ``adjust_hue`` on a PIL image converts it to PIL's uint8 HSV, adds
``k = int(factor * 255)`` to the hue band modulo 256 and converts back. Both conversions run
in floating point per pixel in PIL. Here the same three steps give the same bytes with a few
vectorised integer operations and table look-ups:

* RGB -> HSV. ``v`` is the largest channel. PIL's hue depends only on the channel differences,
  so it is a function of (which channel is largest, middle, smallest; ``mid - min``;
  ``max - min``): an 8 x 256 x 256 table (:data:`HUE` of :func:`tables`), indexed by three
  comparison bits. The saturation is a function of (``max``, ``min``): a 256 x 256 table.
  Both tables are PIL's own conversion of one representative colour per cell.
* The hue band plus ``k``, wrapping in uint8 as torchvision's ``np_h += k`` does.
* HSV -> RGB. In PIL's sector ``i = floor(6 h / 255)`` the three output channels are a
  permutation (fixed per sector) of ``v``, ``p = round(v (1 - s/255))`` and one middle level
  ``round(v c)``, where ``c`` depends only on (``h``, ``s``): ``p`` is a 256 x 256 table (PIL's
  own conversion again), ``c`` a 256 x 256 float64 table computed with PIL's float and double
  operations in PIL's order. The sector masks are comparisons of ``h`` with five bounds.

Each table is checked against PIL when it is built (every (h, s) pair for a few values of
``v``); if this PIL disagrees, :func:`tables` returns ``None`` and callers keep PIL's own
round trip. ``tests/test_hue_lut.py`` compares both conversions with PIL on all 2^24 inputs,
so the rotation equals PIL's bit for bit for every image and every shift.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import NamedTuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

_CHECK_VALUES = (1, 77, 128, 191, 254, 255)  # v levels of the build-time check


class HueTables(NamedTuple):
    """The look-up tables of the hue rotation (see the module docstring)."""

    hue: np.ndarray  # uint8 [bits << 16 | (mid - min) << 8 | (max - min)]
    sat_low: np.ndarray  # uint16 [max << 8 | min]: saturation | p << 8
    low: np.ndarray  # uint8 [v << 8 | s]: p
    middle: np.ndarray  # float64 [h << 8 | s]: c, the middle level is round(v * c)
    bounds: tuple[int, ...]  # first hue level of sectors 1..5


def _pil(pixels: np.ndarray, mode: str, target: str) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels, mode).convert(target))


def order_bits(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 ``(r >= g) | (g >= b) << 1 | (r >= b) << 2``: which channel is max, mid and min."""
    bits = (r >= g).view(np.uint8) | ((g >= b).view(np.uint8) << 1)
    bits |= (r >= b).view(np.uint8) << 2
    return bits


def _hue_table() -> np.ndarray:
    """PIL's hue of the colour (max - min, mid - min, 0), arranged by ``order_bits``."""
    spread = np.arange(256)[None, :]
    middle = np.arange(256)[:, None]
    colours = np.zeros((8, 256, 256, 3), np.uint8)
    for order in itertools.permutations(range(3)):  # (max, mid, min) channel indices
        rank = np.empty(3, np.uint8)
        rank[list(order)] = (2, 1, 0)
        bits = int(order_bits(*(rank[c : c + 1] for c in range(3)))[0])
        colours[bits, ..., order[0]] = np.broadcast_to(spread, (256, 256))
        colours[bits, ..., order[1]] = np.where(middle <= spread, middle, 0)
    hue = _pil(colours.reshape(8 * 256, 256, 3), "RGB", "HSV")[..., 0]
    return np.ascontiguousarray(hue).reshape(-1)


def _middle_table() -> tuple[np.ndarray, tuple[int, ...]]:
    """PIL's ``q`` (odd sectors) or ``t`` (even sectors) factor per (h, s), in PIL's precision."""
    h = np.arange(256, dtype=np.float64)[:, None]
    sector = np.floor(h * 6.0 / 255.0)
    f = (h * 6.0 / 255.0 - sector).astype(np.float32)  # float f = (float)h * 6.0 / 255.0 - i
    fs = (np.arange(256, dtype=np.float64)[None, :] / 255.0).astype(np.float32)
    q = 1.0 - (fs * f).astype(np.float64)  # 1.0 - fs * f, the product in float
    t = 1.0 - fs.astype(np.float64) * (1.0 - f.astype(np.float64))
    middle = np.where(sector.astype(np.int64) % 2 == 1, q, t)
    # h = 255 is PIL's sector 6 = 0 with f = 0: (v, p, p), which sector 5's layout also gives
    first = np.minimum(sector[:, 0].astype(np.int64), 5)
    bounds = tuple(int(np.argmax(first >= k)) for k in range(1, 6))
    return np.ascontiguousarray(middle).reshape(-1), bounds


def _build() -> HueTables:
    level = np.arange(256)
    high, low_level = np.meshgrid(level, level, indexing="ij")
    low_level = np.minimum(low_level, high)
    grey_pair = np.stack([high, low_level, low_level], -1).astype(np.uint8)
    sat = _pil(grey_pair, "RGB", "HSV")[..., 1]  # [max, min]
    v, s = np.meshgrid(level, level, indexing="ij")
    hsv = np.stack([np.zeros_like(v), s, v], -1).astype(np.uint8)
    low = np.ascontiguousarray(_pil(hsv, "HSV", "RGB")[..., 2])  # sector 0, f = 0: (v, t, p)
    sat_low = sat.astype(np.uint16) | (low[high, sat].astype(np.uint16) << 8)
    middle, bounds = _middle_table()
    return HueTables(_hue_table(), sat_low.reshape(-1), low.reshape(-1), middle, bounds)


def _agrees_with_pil(t: HueTables) -> bool:
    h, s = (a.reshape(-1).astype(np.uint8) for a in np.meshgrid(*[np.arange(256)] * 2))
    for value in _CHECK_VALUES:
        v = np.full_like(h, value)
        expected = _pil(np.stack([h, s, v], -1)[None], "HSV", "RGB")[0]
        if not np.array_equal(np.stack(hsv_to_rgb(h, s, v, t), -1), expected):
            return False
        rgb = [np.ascontiguousarray(c) for c in expected.T]
        expected_hsv = _pil(expected[None], "RGB", "HSV")[0]
        if not np.array_equal(np.stack(rgb_to_hsv(*rgb, t), -1), expected_hsv):
            return False
    return True


@functools.cache
def tables() -> HueTables | None:
    """The tables, built once per process (~50 ms); ``None`` if they do not reproduce PIL."""
    built = _build()
    if not _agrees_with_pil(built):
        logger.warning("hue tables disagree with this PIL's HSV conversion; using PIL's")
        return None
    return built


def rgb_to_hsv(
    r: np.ndarray, g: np.ndarray, b: np.ndarray, t: HueTables
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's ``convert("HSV")`` of flat uint8 channel planes: (h, s, v) planes."""
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    key = _hue_key(r, g, b, high, low)
    sat = t.sat_low.take(_pair(high, low)).view(np.uint8)[0::2]
    return t.hue.take(key), np.ascontiguousarray(sat), high


def hsv_to_rgb(
    h: np.ndarray, s: np.ndarray, v: np.ndarray, t: HueTables
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's ``convert("RGB")`` of flat uint8 HSV planes: (r, g, b) planes."""
    return _sectors(h, s, v, t.low.take(_pair(v, s)), t)


def _pair(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    key = high.astype(np.intp)
    key <<= 8
    key |= low
    return key


def _hue_key(r, g, b, high, low) -> np.ndarray:  # noqa: ANN001 - uint8 planes
    middle = r + g  # uint8 arithmetic wraps; mid - min lies in [0, 255], so it comes out exact
    middle += b
    middle -= high
    middle -= low
    middle -= low
    key = order_bits(r, g, b).astype(np.intp)
    key <<= 8
    key |= middle
    key <<= 8
    key |= high - low
    return key


def _mask(flags: np.ndarray) -> np.ndarray:
    return -flags.view(np.uint8)  # 0 or 255


def _sectors(
    h: np.ndarray, s: np.ndarray, v: np.ndarray, p: np.ndarray, t: HueTables
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, g, b) from (h, s, v) and p: the sector's permutation of (v, p, middle)."""
    middle = t.middle.take(_pair(h, s))
    middle *= v
    middle += 0.5  # PIL's round() of a non-negative double, half away from zero
    mid = middle.astype(np.uint8)
    below = [h < bound for bound in t.bounds]  # h below the first level of sectors 1..5
    # sectors where each channel is v (top) or p (bottom); the middle level elsewhere
    tops = (~(below[4] ^ below[0]), below[2] ^ below[0], below[4] ^ below[2])
    bottoms = (below[3] ^ below[1], ~below[3], below[1])
    out = []
    for top, bottom in zip(tops, bottoms, strict=True):
        channel = mid ^ ((mid ^ p) & _mask(bottom))
        channel ^= (channel ^ v) & _mask(top)
        out.append(channel)
    return out[0], out[1], out[2]


def rotate_hue(image: Image.Image, step: int, t: HueTables) -> Image.Image:
    """torchvision's ``adjust_hue`` of an RGB image: PIL's hue band plus ``step`` (mod 256)."""
    r, g, b = (np.frombuffer(image.tobytes("raw", band), np.uint8) for band in "RGB")
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    h = t.hue.take(_hue_key(r, g, b, high, low))
    h += np.uint8(step % 256)
    sat_low = t.sat_low.take(_pair(high, low)).view(np.uint8)
    planes = _sectors(h, sat_low[0::2], high, sat_low[1::2], t)
    bands = [Image.frombuffer("L", image.size, plane, "raw", "L", 0, 1) for plane in planes]
    return Image.merge("RGB", bands)
