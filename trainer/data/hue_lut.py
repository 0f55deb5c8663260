"""PIL's hue rotation of an RGB image, computed on uint8 planes with small lookup tables.

torchvision's ``adjust_hue`` on a PIL image converts it to PIL's uint8 HSV, adds
``k = int(factor * 255)`` to the hue band modulo 256 and converts back. Both conversions run
in floating point per pixel in PIL. Here the same three steps give the same bytes with a few
vectorised integer operations and table look-ups:

* RGB -> HSV. ``v`` is the largest channel. PIL's hue depends only on the channel differences,
  so it is a function of (which channel is largest, middle, smallest; ``mid - min``;
  ``max - min``): a table of the 6 orderings x the 32896 pairs with ``mid - min <= max - min``
  (``HueTables.hue``), the ordering read from three comparison bits. The saturation is a
  function of (``max``, ``min``): a 256 x 256 table. Both tables are PIL's own conversion of
  one representative colour per cell.
* The hue band plus ``k``, wrapping in uint8 as torchvision's ``np_h += k`` does.
* HSV -> RGB. In PIL's sector ``i = floor(6 h / 255)`` the three output channels are a
  permutation (fixed per sector) of ``v``, ``p = round(v (1 - s/255))`` and one middle level
  ``round(v c)``, where ``c`` depends only on (``h``, ``s``): ``p`` is a 256 x 256 table (PIL's
  own conversion again), ``c`` a 256 x 256 table computed with PIL's float and double
  operations in PIL's order, then stored as float32: ``v * c + 0.5`` in float32 truncates to
  PIL's rounded double product on every (h, s, v). Which channel is ``v``, ``p`` or the middle
  level is a 256-entry table of masks per ``h``.

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
_BIT_SHIFTS = np.arange(3, dtype=np.uint8)[:, None]
TRIANGLE = np.cumsum(np.arange(257), dtype=np.intp)[:257]  # cells (e <= d) before spread d


class HueTables(NamedTuple):
    """The look-up tables of the hue rotation (see the module docstring)."""

    hue: np.ndarray  # uint8 [slot(bits) + triangle(max - min) + (mid - min)]
    slots: np.ndarray  # intp [bits]: the offset of each of the 6 orderings in ``hue``
    sat_low: np.ndarray  # uint16 [max << 8 | min]: the bytes (saturation, p)
    low: np.ndarray  # uint8 [v << 8 | s]: p
    middle: np.ndarray  # float32 [h << 8 | s]: c, the middle level is round(v * c)
    bounds: np.ndarray  # uint8 (6, 1): first level of sectors 1..5, and 0


def _pil(pixels: np.ndarray, mode: str, target: str) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels, mode).convert(target))


def order_bits(planes: np.ndarray) -> np.ndarray:
    """uint8 ``(r >= g) | (g >= b) << 1 | (r >= b) << 2`` of (3, N) planes: max, mid and min."""
    above = np.empty(planes.shape, bool)
    np.greater_equal(planes[0:2], planes[1:3], out=above[0:2])
    np.greater_equal(planes[0], planes[2], out=above[2])
    return np.bitwise_or.reduce(above.view(np.uint8) << _BIT_SHIFTS, axis=0)


def _hue_table() -> tuple[np.ndarray, np.ndarray]:
    """PIL's hue of the colour (max - min, mid - min, 0) per ``order_bits``, and the slots.

    Only the 6 orderings and ``mid - min <= max - min`` occur: the table keeps those cells
    (6 x 32896 bytes), so that fewer cache lines are touched per image.
    """
    spread = np.arange(256)[None, :]
    middle = np.arange(256)[:, None]
    colours = np.zeros((8, 256, 256, 3), np.uint8)
    orders = []
    for order in itertools.permutations(range(3)):  # (max, mid, min) channel indices
        rank = np.empty(3, np.uint8)
        rank[list(order)] = (2, 1, 0)
        bits = int(order_bits(rank[:, None])[0])
        orders.append(bits)
        colours[bits, ..., order[0]] = np.broadcast_to(spread, (256, 256))
        colours[bits, ..., order[1]] = np.where(middle <= spread, middle, 0)
    hue = _pil(colours.reshape(8 * 256, 256, 3), "RGB", "HSV")[..., 0].reshape(8, 256, 256)
    used = sorted(set(orders))
    slots = np.zeros(8, np.intp)
    slots[used] = np.arange(len(used)) * TRIANGLE[-1]
    spread, middle = np.nonzero(np.arange(256)[None, :] <= np.arange(256)[:, None])
    compact = np.zeros(len(used) * int(TRIANGLE[-1]), np.uint8)
    for bits in used:
        compact[slots[bits] + TRIANGLE[spread] + middle] = hue[bits, middle, spread]
    return compact, slots


def _middle_table() -> np.ndarray:
    """PIL's ``q`` (odd sectors) or ``t`` (even sectors) factor per (h, s), in PIL's precision."""
    h = np.arange(256, dtype=np.float64)[:, None]
    sector = np.floor(h * 6.0 / 255.0)
    f = (h * 6.0 / 255.0 - sector).astype(np.float32)  # float f = (float)h * 6.0 / 255.0 - i
    fs = (np.arange(256, dtype=np.float64)[None, :] / 255.0).astype(np.float32)
    q = 1.0 - (fs * f).astype(np.float64)  # 1.0 - fs * f, the product in float
    t = 1.0 - fs.astype(np.float64) * (1.0 - f.astype(np.float64))
    # float32 c with float32 v * c + 0.5 rounds as PIL's double product on all 2^24 inputs
    middle = np.where(sector.astype(np.int64) % 2 == 1, q, t).astype(np.float32)
    return np.ascontiguousarray(middle).reshape(-1)


def _sector_bounds() -> np.ndarray:
    """(6, 1) uint8: the first hue level of PIL's sectors 1..5, then 0 (``h < 0`` never holds)."""
    sector = np.floor(np.arange(256) * 6.0 / 255.0)
    # h = 255 is PIL's sector 6 = 0 with f = 0: (v, p, p), which sector 5's layout also gives
    firsts = [int(np.argmax(sector >= k)) for k in range(1, 6)]
    return np.array([*firsts, 0], np.uint8)[:, None]


# With below[k] = h < (first level of sector k + 1) and below[5] false, the channels that are
# v (rows 0-2: R in sectors 0 and 5, G in 1-2, B in 3-4) and p (rows 3-5: R in 2-3, G in 4-5,
# B in 0-1) are below[_A] ^ below[_B] ^ _C; the middle level fills the rest.
_A = np.array([4, 2, 4, 3, 3, 1])
_B = np.array([0, 0, 2, 1, 5, 5])
_C = np.array([1, 0, 0, 0, 1, 0], bool)[:, None]


def _build() -> HueTables:
    level = np.arange(256)
    high, low_level = np.meshgrid(level, level, indexing="ij")
    low_level = np.minimum(low_level, high)
    grey_pair = np.stack([high, low_level, low_level], -1).astype(np.uint8)
    sat = _pil(grey_pair, "RGB", "HSV")[..., 1]  # [max, min]
    v, s = np.meshgrid(level, level, indexing="ij")
    hsv = np.stack([np.zeros_like(v), s, v], -1).astype(np.uint8)
    low = np.ascontiguousarray(_pil(hsv, "HSV", "RGB")[..., 2])  # sector 0, f = 0: (v, t, p)
    sat_low = np.stack([sat, low[high, sat]], -1).astype(np.uint8)
    hue, slots = _hue_table()
    sat_low = sat_low.reshape(-1, 2).view(np.uint16)[:, 0]
    return HueTables(hue, slots, sat_low, low.reshape(-1), _middle_table(), _sector_bounds())


def _agrees_with_pil(t: HueTables) -> bool:
    h, s = (a.reshape(-1).astype(np.uint8) for a in np.meshgrid(*[np.arange(256)] * 2))
    for value in _CHECK_VALUES:
        v = np.full_like(h, value)
        expected = _pil(np.stack([h, s, v], -1)[None], "HSV", "RGB")[0]
        if not np.array_equal(hsv_to_rgb(h, s, v, t).T, expected):
            return False
        expected_hsv = _pil(expected[None], "RGB", "HSV")[0]
        if not np.array_equal(np.stack(rgb_to_hsv(expected.T.copy(), t), -1), expected_hsv):
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


def rgb_to_hsv(planes: np.ndarray, t: HueTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's ``convert("HSV")`` of (3, N) uint8 RGB planes: the (h, s, v) planes."""
    high = planes.max(axis=0)
    low = planes.min(axis=0)
    h = t.hue.take(_hue_key(planes, high, low, t))
    return h, _sat_low(high, low, t)[:, 0].copy(), high


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray, t: HueTables) -> np.ndarray:
    """PIL's ``convert("RGB")`` of uint8 HSV planes: the (3, N) uint8 RGB planes."""
    return _sectors(h, s, v, t.low.take(_pair(v, s)), t)


def _sat_low(high: np.ndarray, low: np.ndarray, t: HueTables) -> np.ndarray:
    """(N, 2) uint8: saturation and p per pixel, from its max and min."""
    return t.sat_low.take(_pair(high, low)).view(np.uint8).reshape(-1, 2)


def _pair(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    key = high.astype(np.intp)
    key <<= 8
    key |= low
    return key


def _hue_key(planes: np.ndarray, high: np.ndarray, low: np.ndarray, t: HueTables) -> np.ndarray:
    middle = planes.sum(axis=0, dtype=np.uint8)  # wraps; mid - min is in [0, 255], so exact
    middle -= high
    middle -= low
    middle -= low
    key = t.slots.take(order_bits(planes))
    key += TRIANGLE.take(high - low)
    key += middle
    return key


def _sectors(
    h: np.ndarray, s: np.ndarray, v: np.ndarray, p: np.ndarray, t: HueTables
) -> np.ndarray:
    """(3, N) RGB from (h, s, v) and p: the sector's permutation of (v, p, middle level)."""
    middle = t.middle.take(_pair(h, s))
    middle *= v
    middle += np.float32(0.5)  # PIL's round() of a non-negative product, half away from zero
    level = middle.astype(np.uint8)
    below = h < t.bounds
    chosen = below.take(_A, axis=0)
    chosen ^= below.take(_B, axis=0)
    chosen ^= _C
    masks = -chosen.view(np.uint8)  # 255 where chosen
    out = (level ^ p) & masks[3:]
    out ^= level  # p where chosen, the middle level elsewhere
    out ^= (out ^ v) & masks[:3]  # then v where chosen
    return out


def rotate_hue(image: Image.Image, step: int, t: HueTables) -> Image.Image:
    """torchvision's ``adjust_hue`` of an RGB image: PIL's hue band plus ``step`` (mod 256)."""
    data = b"".join(image.tobytes("raw", band) for band in "RGB")
    planes = np.frombuffer(data, np.uint8).reshape(3, -1)
    high = planes.max(axis=0)
    low = planes.min(axis=0)
    h = t.hue.take(_hue_key(planes, high, low, t))
    h += np.uint8(step % 256)
    sat_low = _sat_low(high, low, t)
    planes = _sectors(h, sat_low[:, 0], high, sat_low[:, 1], t)
    bands = [Image.frombuffer("L", image.size, plane, "raw", "L", 0, 1) for plane in planes]
    return Image.merge("RGB", bands)
