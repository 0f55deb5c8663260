"""Turn an /attention reply into what the page shows: images, labelled galleries, tables, text.

The service draws the overlays (PNG, at the processed resolution); this module decodes them,
labels them per head, lays two models out side by side, and formats numbers. No torch here.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from app.model_info import register_note

GalleryItems = list[tuple[Image.Image, str]]
_GAP = 6
UNTRAINED_MARK = "random weights"


class RenderError(ValueError):
    """The service's reply cannot be displayed (missing or broken overlay)."""


def decode_png(data_b64: str) -> Image.Image:
    """A base64 overlay from the service (PNG, JPEG or WebP: ``overlay_mime``) as an RGB image."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data_b64, validate=True)))
        image.load()
    except Exception as exc:  # noqa: BLE001 - any decoding problem is one readable message
        raise RenderError(
            f"an overlay sent by the service is not a readable image ({exc})"
        ) from exc
    return image.convert("RGB")


def _overlays(result: dict[str, Any]) -> dict[str, Any]:
    overlays = result.get("overlays")
    if not isinstance(overlays, dict) or not overlays.get("heads"):
        raise RenderError(
            "the service's reply has no overlays; it must be called with overlays=true"
        )
    return overlays


def head_label(index: int) -> str:
    """The caption of head ``index`` everywhere on the page."""
    return f"head {index}"


def processed_image(result: dict[str, Any]) -> Image.Image:
    """The input image as the model saw it (resized and cropped), so every overlay aligns with
    it."""
    return decode_png(_overlays(result)["image"])


def untrained(result: dict[str, Any]) -> bool:
    """Whether the reply says its model's weights are random (``trained: false``)."""
    return result.get("trained") is False


def mark_untrained(image: Image.Image) -> Image.Image:
    """``image`` with a "random weights" label in its lower left corner, sized to the picture."""
    out = image.copy()
    size = int(min(max(out.width / 18, 9), 22))
    font = _font(size)
    draw = ImageDraw.Draw(out, "RGBA")
    x0, y0, x1, y1 = draw.textbbox((0, 0), UNTRAINED_MARK, font=font)
    pad = max(2, size // 4)
    top = out.height - (y1 - y0) - 2 * pad
    draw.rectangle([0, top, x1 - x0 + 2 * pad, out.height], fill=(170, 20, 20, 200))
    draw.text((pad - x0, top + pad - y0), UNTRAINED_MARK, fill=(255, 255, 255, 255), font=font)
    return out


def model_picture(result: dict[str, Any], data_b64: str) -> Image.Image:
    """An overlay the model made, marked when the model's weights are random."""
    image = decode_png(data_b64)
    return mark_untrained(image) if untrained(result) else image


def mean_overlay(result: dict[str, Any]) -> Image.Image:
    return model_picture(result, _overlays(result)["mean"])


def head_gallery(result: dict[str, Any]) -> GalleryItems:
    """One heat overlay per head, captioned ``head 0`` .. ``head n-1``."""
    heads = _overlays(result)["heads"]
    return [(model_picture(result, png), head_label(i)) for i, png in enumerate(heads)]


def mask_gallery(result: dict[str, Any]) -> GalleryItems:
    """Each head's kept region (with outline), captioned with the head and its coverage."""
    coverage = result.get("coverage", [])
    items = []
    for i, png in enumerate(_overlays(result).get("masks", [])):
        kept = f" · {coverage[i]:.0%} kept" if i < len(coverage) else ""
        items.append((model_picture(result, png), head_label(i) + kept))
    return items


def query_gallery(result: dict[str, Any]) -> GalleryItems:
    """The query patch's attention per head (patch outlined by the service), or nothing without a
    query."""
    overlays = _overlays(result)
    return [
        (model_picture(result, png), head_label(i))
        for i, png in enumerate(overlays.get("query_heads") or [])
    ]


def optional_overlay(result: dict[str, Any], key: str) -> Image.Image | None:
    """``overlays[key]`` decoded, or None when the reply does not carry it."""
    data = _overlays(result).get(key)
    return model_picture(result, data) if data else None


def query_text(result: dict[str, Any]) -> str:
    """Which attention the query panel shows."""
    query = result.get("query")
    layer = result.get("layer", "?")
    if not query:
        return (
            f"Block {layer}: click a patch of the image to see what it attends to "
            "(the CLS token is shown above)."
        )
    return (
        f"Block {layer}: attention **from patch row {query[0]}, col {query[1]}** "
        "(outlined in cyan) to every patch."
    )


def composite_legend(result: dict[str, Any]) -> str:
    """HTML swatches naming the colour of each head in the composite."""
    heads = result.get("composite_heads") or []
    colors = result.get("composite_colors") or []
    if not colors:
        return "<div class='composite-legend'>Tick at least one head to draw the composite.</div>"
    items = "".join(
        "<span class='swatch-item'>"
        f"<span class='swatch' style='background: rgb({r}, {g}, {b})'></span>"
        f"{head_label(h)}</span>"
        for h, (r, g, b) in zip(heads, colors, strict=False)
    )
    return f"<div class='composite-legend' id='composite-legend-items'>{items}</div>"


def coverage_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per head: fraction of patches kept, number kept, and IoU against the ground truth when
    given."""
    masks = np.asarray(result["masks"])
    table = pd.DataFrame(
        {
            "head": [head_label(i) for i in range(len(result["coverage"]))],
            "coverage": [round(float(c), 4) for c in result["coverage"]],
            "kept patches": [int(m.sum()) for m in masks],
        }
    )
    if result.get("iou") is not None:
        table["IoU"] = [round(float(v), 4) for v in result["iou"]]
    return table


def best_head_text(result: dict[str, Any]) -> str:
    """The best head against the ground-truth mask, or how to get one."""
    if result.get("iou") is None:
        return "Upload a ground-truth mask to see the IoU of each head and the best head."
    best = int(result["best_head"])
    return (
        f"**Best head: {head_label(best)}** (IoU {float(result['best_iou']):.3f} "
        "against the ground-truth mask)"
    )


UNTRAINED_WORDS = "random weights: structure here comes from colour, not learning"


def weights_word(trained: bool | None) -> str:
    if trained is None:
        return "weights of unknown origin"
    if trained:
        return "trained weights"
    return f"**{UNTRAINED_WORDS}**"


def card_text(summary: object, limit: int | None = None) -> str:
    """A model card summary on one line ("" when absent), cut to ``limit`` characters ending in
    "…"."""
    if not isinstance(summary, str):
        return ""
    text = " ".join(summary.split())
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + "…"
    return text


def weights_text(trained: bool | None, summary: object = None) -> str:
    """:func:`weights_word`, followed by the model card summary unless the weights are untrained."""
    card = card_text(summary) if trained is not False else ""
    return f"{weights_word(trained)} ({card})" if card else weights_word(trained)


def status_text(result: dict[str, Any]) -> str:
    """One plain line: which model is shown, trained or placeholder, and what was computed."""
    gh, gw = result.get("grid", ["?", "?"])
    h, w = result.get("image_size", ["?", "?"])
    params = result.get("params", {})
    total = result.get("timings_ms", {}).get("total")
    took = f" in {total:.0f} ms" if isinstance(total, int | float) else ""
    if result.get("cached"):
        took += " (maps from the cache: no model run)"
    return (
        f"Showing **{result['model']}** ({result.get('arch', '?')}, "
        f"patch {result.get('patch_size', '?')}, {result['num_heads']} heads): "
        f"{weights_text(result.get('trained'), result.get('summary'))}. "
        f"Image {h}×{w} px, grid {gh}×{gw} patches (rows × cols), "
        f"block {result.get('layer', 'last')}, "
        f"threshold {params.get('threshold', '?')}{took}." + register_note(result)
    )


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


MIN_PANEL_W = 240  # a compared panel is upscaled (nearest) to at least this width


def title_font_size(width: int) -> int:
    """The title's font size for a panel ``width`` px wide: large enough to stay >= 14 px when
    the gallery shows the pair at about two thirds of its size."""
    return max(16, width // 20)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _titled(image: Image.Image | None, title: str, height: int, width: int) -> Image.Image:
    """``image`` scaled to ``height`` with a title strip above (wrapped to the panel's width);
    a grey panel when ``image`` is None."""
    if image is None:
        body = Image.new("RGB", (width, height), (60, 60, 60))
    else:
        scale = height / image.height
        body = image.resize((max(1, round(image.width * scale)), height), Image.NEAREST)
    size = title_font_size(body.width)
    font = _font(size)
    lines = _wrap(ImageDraw.Draw(body), title, font, body.width - 8)
    strip = len(lines) * (size + 4) + 6
    panel = Image.new("RGB", (body.width, height + strip), (255, 255, 255))
    panel.paste(body, (0, strip))
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * (size + 4)), line, fill=(20, 20, 20), font=font)
    return panel


def side_by_side(
    left: Image.Image | None, right: Image.Image | None, left_title: str, right_title: str
) -> Image.Image:
    """Two panels at the same height, titled, with a white gap; a missing one is a grey
    placeholder."""
    present = [im for im in (left, right) if im is not None]
    if not present:
        raise RenderError("nothing to compare: both panels are empty")
    zoom = max(1, -(-MIN_PANEL_W // max(im.width for im in present)))  # small maps: upscale
    height = max(im.height for im in present) * zoom
    width = max(im.width for im in present) * zoom
    a = _titled(left, left_title, height, width)
    b = _titled(right, right_title, height, width)
    strip = max(a.height, b.height)
    canvas = Image.new("RGB", (a.width + _GAP + b.width, strip), (255, 255, 255))
    a, b = _bottom_aligned(a, strip), _bottom_aligned(b, strip)
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + _GAP, 0))
    return canvas


def _bottom_aligned(panel: Image.Image, height: int) -> Image.Image:
    """``panel`` on a white canvas ``height`` tall, its picture at the bottom (titles differ in
    lines)."""
    if panel.height == height:
        return panel
    out = Image.new("RGB", (panel.width, height), (255, 255, 255))
    out.paste(panel, (0, height - panel.height))
    return out
