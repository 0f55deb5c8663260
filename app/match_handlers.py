"""What the Match tab does: best buddies of two images, and where a clicked patch of A is in B."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from app import handlers, model_handlers, rendering
from app.handlers import ERROR_TOAST_S, AttentionClient

MARKER_RGB = (0, 255, 255)


def _check(image_a: str | None, image_b: str | None) -> None:
    if not image_a or not image_b:
        raise gr.Error(
            "Upload both images (A and B) first.",
            title="Nothing to match",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )


def patch_of_click(
    xy: tuple[float, float], source_wh: tuple[int, int], image_size: int, patch: int
) -> tuple[int, int]:
    """(row, col) of the patch under pixel ``xy`` of the uploaded image (keep_aspect resize)."""
    scale = image_size / min(source_wh)
    return int(xy[1] * scale // patch), int(xy[0] * scale // patch)


def similarity_picture(image_b: str, reply: dict[str, Any]) -> Image.Image:
    """B with its similarity to A's patch as an inferno heat map and the best match marked."""
    base = Image.open(image_b).convert("RGB")
    sim = np.asarray(reply["similarity"], dtype=np.float32)
    low, high = float(sim.min()), float(sim.max())
    norm = (sim - low) / (high - low) if high > low else np.zeros_like(sim)
    heat = (colormaps["inferno"](norm)[..., :3] * 255).astype(np.uint8)
    heat_img = Image.fromarray(heat).resize(base.size, Image.Resampling.NEAREST)
    out = Image.blend(base, heat_img, 0.55)
    rows, cols = sim.shape
    r, c = reply["best_match"]
    w, h = base.width / cols, base.height / rows
    ImageDraw.Draw(out).rectangle(
        [c * w, r * h, (c + 1) * w, (r + 1) * h], outline=MARKER_RGB, width=3
    )
    return out


def run_match(
    client: AttentionClient,
    image_a: str | None,
    image_b: str | None,
    model: str | None,
    image_size: float,
    facet: str,
    layer: float,
    top_k: float,
    query: tuple[int, int] | None = None,
) -> tuple[Image.Image, Image.Image | None, str, dict[str, Any]]:
    """(pairs picture, B's similarity picture or None, status line, reply)."""
    _check(image_a, image_b)
    fields: dict[str, Any] = {"facet": facet, "layer": int(layer), "top_k": int(top_k)}
    fields["overlay"] = "true"
    if query is not None:
        fields["query"] = f"{query[0]},{query[1]}"
    reply = handlers.readable_errors(
        "match the two images",
        lambda: client.match(image_a, image_b, model or None, int(image_size), **fields),
    )
    pairs = rendering.model_picture(reply, reply["overlay"])
    heat = similarity_picture(image_b, reply) if query is not None else None
    if heat is not None and rendering.untrained(reply):
        heat = rendering.mark_untrained(heat)
    status = status_line(reply)
    return pairs, heat, status, reply


def status_line(reply: dict[str, Any]) -> str:
    """Model, block, facet, pairs and grids (rows x cols), the clicked patch's best match, and
    the untrained model's warning."""
    rows_a, cols_a = reply["grid_a"]
    rows_b, cols_b = reply["grid_b"]
    untrained = ""
    if rendering.untrained(reply):
        untrained = f" **{model_handlers.untrained_text(reply.get('trained_reason'))}.**"
    line = (
        f"{reply['model']}, block {reply['layer']}, {reply['facet']} facet: "
        f"{len(reply['matches'])} best buddies; A {rows_a}x{cols_a}, B {rows_b}x{cols_b} patches "
        "(rows x cols)."
    )
    if reply.get("query") is not None:
        r, c = reply["best_match"]
        line += f" Patch {reply['query']} of A is most like patch [{r}, {c}] of B."
    return line + untrained
