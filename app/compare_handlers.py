"""The Compare tab's event: two models on one image, head for head, with a coverage table."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from app import model_info, rendering
from app.handlers import (
    ERROR_TOAST_S,
    AttentionClient,
    call_attention,
    check_inputs,
    readable_errors,
    request_record,
)

CompareView = tuple[rendering.GalleryItems, Image.Image, pd.DataFrame, str]


def _compare_table(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    n = max(len(a["coverage"]), len(b["coverage"]))

    def column(result: dict[str, Any], key: str) -> list[float | None]:
        values = result.get(key) or []
        return [round(float(values[i]), 4) if i < len(values) else None for i in range(n)]

    table = pd.DataFrame(
        {
            "head": [rendering.head_label(i) for i in range(n)],
            "A coverage": column(a, "coverage"),
            "B coverage": column(b, "coverage"),
        }
    )
    if a.get("iou") is not None or b.get("iou") is not None:
        table["A IoU"] = column(a, "iou")
        table["B IoU"] = column(b, "iou")
    for name, result in (("A", a), ("B", b)):
        share = model_info.register_share(result)
        if share is not None:  # the attention a register model's CLS gave its registers
            table[f"{name} to registers"] = [share[i] if i < len(share) else None for i in range(n)]
    return table


def _side_by_side_view(a: dict[str, Any], b: dict[str, Any]) -> CompareView:
    """Head i of A beside head i of B, the two means side by side, the table and a status."""
    heads_a = [im for im, _ in rendering.head_gallery(a)]
    heads_b = [im for im, _ in rendering.head_gallery(b)]
    title_a = model_info.model_title("A", a)
    title_b = model_info.model_title("B", b)
    pairs = []
    for i in range(max(len(heads_a), len(heads_b))):
        left = heads_a[i] if i < len(heads_a) else None
        right = heads_b[i] if i < len(heads_b) else None
        pairs.append(
            (rendering.side_by_side(left, right, title_a, title_b), rendering.head_label(i))
        )
    means = rendering.side_by_side(
        rendering.mean_overlay(a),
        rendering.mean_overlay(b),
        f"{title_a} (mean)",
        f"{title_b} (mean)",
    )
    status = f"A: {rendering.status_text(a)}\n\nB: {rendering.status_text(b)}"
    return pairs, means, _compare_table(a, b), status


def compare(
    client: AttentionClient,
    image: str | None,
    model_a: str | None,
    model_b: str | None,
    image_size: float,
    resize: str,
    threshold: float,
    gt_mask: str | None = None,
) -> CompareView:
    """Two models on the same image: head i of A beside head i of B, the means, and a table."""
    check_inputs(image, threshold, image_size)
    assert image is not None
    if not model_a or not model_b:
        raise gr.Error(
            "Pick a model A and a model B to compare.",
            title="No models",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )
    request = request_record(image, None, image_size, resize, threshold, gt_mask)

    def run() -> CompareView:
        a = call_attention(client, image, model_a, request, gt_mask)
        b = call_attention(client, image, model_b, request, gt_mask)
        return _side_by_side_view(a, b)

    return readable_errors("compare the models", run)
