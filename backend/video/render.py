"""One output frame per analysed frame, for each ``render`` choice of ``POST /attention/video``.

* ``mean``: the mean over heads alone, inferno colormap, min-max scaled per frame (the authors'
  video_generation.py picture);
* ``heads``: a grid of every head's map (inferno), each panel labelled;
* ``masks``: each head's thresholded mask in its own colour over the frame (Figure 3 style);
* ``side``: the frame and its mean map side by side.

Maps are upsampled to pixels by repeating each patch (nearest), as the service's overlays are.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from trainer.model.attention_maps import upsample_nearest

RENDERS: tuple[str, ...] = ("mean", "heads", "masks", "side")
HEAD_COLOURS = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
    ],
    dtype=np.float32,
)
MASK_ALPHA = 0.5
RANDOM_WEIGHTS_MARK = "random weights"  # drawn on every frame of an untrained model
_INFERNO = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def inferno(values: np.ndarray) -> np.ndarray:
    """``h x w`` floats -> ``h x w x 3`` uint8, min-max scaled (as ``plt.imsave`` does)."""
    v = values.astype(np.float32)
    lo = float(v.min())
    hi = float(v.max())
    idx = np.clip((v - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _INFERNO[idx]


def _fit(maps: np.ndarray, patch: int, height: int, width: int) -> np.ndarray:
    """Upsample ``(..., gh, gw)`` by ``patch`` and pad (edge) or crop to ``height x width``."""
    up = upsample_nearest(maps, patch)[..., :height, :width]
    pad_h = height - up.shape[-2]
    pad_w = width - up.shape[-1]
    if pad_h or pad_w:
        pad = [(0, 0)] * (up.ndim - 2) + [(0, pad_h), (0, pad_w)]
        up = np.pad(up, pad, mode="edge")
    return up


def render_mean(mean: np.ndarray, patch: int, height: int, width: int) -> np.ndarray:
    return inferno(_fit(mean, patch, height, width))


def render_side(frame: np.ndarray, mean: np.ndarray, patch: int) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.concatenate([frame, render_mean(mean, patch, h, w)], axis=1)


def render_masks(frame: np.ndarray, masks: np.ndarray, patch: int) -> np.ndarray:
    """Each head's mask blended in its colour; where masks overlap their colours are averaged."""
    h, w = frame.shape[:2]
    up = _fit(masks.astype(np.float32), patch, h, w)  # heads, h, w
    colours = HEAD_COLOURS[np.arange(up.shape[0]) % len(HEAD_COLOURS)]
    count = up.sum(0)
    colour = np.einsum("khw,kc->hwc", up, colours) / np.maximum(count, 1)[..., None]
    alpha = (MASK_ALPHA * (count > 0))[..., None]
    out = (1 - alpha) * frame.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def grid_shape(heads: int) -> tuple[int, int]:
    """(rows, cols) of the heads grid: as square as possible, wider than tall."""
    cols = math.ceil(math.sqrt(heads))
    return math.ceil(heads / cols), cols


def render_heads(
    attentions: np.ndarray, patch: int, height: int, width: int, gap: int = 2
) -> np.ndarray:
    """Every head's map in a grid, each panel labelled ``head i`` in its top-left corner."""
    rows, cols = grid_shape(attentions.shape[0])
    out = np.zeros(
        (rows * height + (rows - 1) * gap, cols * width + (cols - 1) * gap, 3), dtype=np.uint8
    )
    for i, attn in enumerate(_fit(attentions, patch, height, width)):
        r, c = divmod(i, cols)
        out[
            r * (height + gap) : r * (height + gap) + height,
            c * (width + gap) : c * (width + gap) + width,
        ] = inferno(attn)
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    for i in range(attentions.shape[0]):
        r, c = divmod(i, cols)
        draw.text(
            (c * (width + gap) + 2, r * (height + gap) + 1), f"head {i}", fill=(255, 255, 255)
        )
    return np.asarray(image)


def mark_random_weights(picture: np.ndarray) -> np.ndarray:
    """``picture`` with a "random weights" label in its lower left corner (untrained models)."""
    image = Image.fromarray(picture)
    size = int(min(max(image.width / 18, 9), 22))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image, "RGBA")
    x0, y0, x1, y1 = draw.textbbox((0, 0), RANDOM_WEIGHTS_MARK, font=font)
    pad = max(2, size // 4)
    top = image.height - (y1 - y0) - 2 * pad
    draw.rectangle([0, top, x1 - x0 + 2 * pad, image.height], fill=(170, 20, 20, 200))
    draw.text((pad - x0, top + pad - y0), RANDOM_WEIGHTS_MARK, fill=(255, 255, 255, 255), font=font)
    return np.asarray(image)


def render_frame(
    render: str,
    frame: np.ndarray,
    attentions: np.ndarray,
    masks: np.ndarray,
    patch: int,
    untrained: bool = False,
) -> np.ndarray:
    """The output picture for ``render`` (one of RENDERS); ``frame`` is what the model saw.
    ``untrained`` (random weights) adds the "random weights" mark."""
    picture = _render(render, frame, attentions, masks, patch)
    return mark_random_weights(picture) if untrained else picture


def _render(
    render: str, frame: np.ndarray, attentions: np.ndarray, masks: np.ndarray, patch: int
) -> np.ndarray:
    h, w = frame.shape[:2]
    if render == "mean":
        return render_mean(attentions.mean(0), patch, h, w)
    if render == "side":
        return render_side(frame, attentions.mean(0), patch)
    if render == "masks":
        return render_masks(frame, masks, patch)
    if render == "heads":
        return render_heads(attentions, patch, h, w)
    raise ValueError(f"unknown render {render!r}; choose one of {', '.join(RENDERS)}")
