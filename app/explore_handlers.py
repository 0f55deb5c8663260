"""The Explore tab's events: one analysis (block, query patch, composite heads), the query patch
picked on the image, and the ZIP of the analysis on screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app import composite, rendering
from app.export import build_zip
from app.handlers import (
    ERROR_TOAST_S,
    AttentionClient,
    call_attention,
    check_inputs,
    readable_errors,
    request_record,
)
from app.view_reuse import STATIC_OUTPUTS, same_view

NO_ANALYSIS = (
    "Nothing to download yet: analyse an image first; the ZIP holds the analysis on screen."
)
NO_QUERY_BASE = "Analyse an image first, then click it to pick the query patch."
AnalysisView = tuple[Any, ...]
# One analysis on screen, output by output: the name of the component each value goes to
# (app/explore_events.py lists the components by these names) and how it is drawn.
ANALYSIS_VIEW: tuple[tuple[str, Any], ...] = (
    ("processed", lambda r, q: rendering.processed_image(r)),
    ("heads", lambda r, q: rendering.head_gallery(r)),
    ("mean", lambda r, q: rendering.mean_overlay(r)),
    ("masks", lambda r, q: rendering.mask_gallery(r)),
    ("table", lambda r, q: rendering.coverage_table(r)),
    ("best", lambda r, q: rendering.best_head_text(r)),
    ("status", lambda r, q: rendering.status_text(r)),
    ("state", lambda r, q: {"result": r, "request": q}),
    ("query_heads", lambda r, q: rendering.query_gallery(r)),
    ("query_mean", lambda r, q: rendering.optional_overlay(r, "query_mean")),
    ("query_caption", lambda r, q: rendering.query_text(r)),
    ("composite", lambda r, q: composite.figure3(r)),
    ("legend", lambda r, q: rendering.composite_legend(r)),
    ("pca", lambda r, q: rendering.optional_overlay(r, "pca")),
    ("pca_fg", lambda r, q: rendering.optional_overlay(r, "pca_fg")),
)
ANALYSIS_NAMES = tuple(name for name, _ in ANALYSIS_VIEW)


def parse_query(text: str | None) -> list[int] | None:
    """The query box's ``"row,col"`` as ``[row, col]``; empty means the CLS token (None)."""
    if not text or not str(text).strip():
        return None
    parts = str(text).replace(" ", "").strip("()[]").split(",")
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise gr.Error(
            f"The query patch must be written row,col (like 3,5), got {text!r}; click the image "
            "or press Clear.",
            title="Bad query patch",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )
    return [int(p) for p in parts]


def model_shape(
    client: AttentionClient, model: str | None, previous: dict[str, Any] | None = None
) -> tuple[int | None, int | None]:
    """(blocks, heads) of ``model`` (None: the default): from the analysis on screen when it is
    of the same model, else from ``GET /models``; None for what is not known."""
    shown = (previous or {}).get("result") or {}
    if shown.get("depth") and (previous or {}).get("request", {}).get("model") == (model or None):
        return int(shown["depth"]), int(shown["num_heads"])
    catalog = client.models()
    model_id = model or catalog.get("default")
    entry = next((m for m in catalog.get("models", []) if m.get("id") == model_id), None) or {}
    depth = entry.get("depth")
    heads = entry.get("num_heads")
    return (int(depth) if depth else None), (int(heads) if heads else None)


def explore_request(
    shape: tuple[int | None, int | None],
    layer: float | None,
    query: str | None,
    heads: list[Any] | None,
) -> dict[str, Any]:
    """The explorer's fields of one analysis: block, query patch, composite heads (None: all).

    None means the last block (-1); any other block goes to the service as it is (one it lacks
    gets the service's message naming the range); ticked heads the model does not have are left
    out.
    """
    _, num_heads = shape
    block = -1 if layer is None else int(layer)
    chosen = (
        None
        if heads is None
        else sorted({int(h) for h in heads if num_heads is None or int(h) < num_heads})
    )
    return {"layer": block, "query": parse_query(query), "heads": chosen}


def _view(
    result: dict[str, Any], request: dict[str, Any], previous: dict[str, Any] | None
) -> AnalysisView:
    """The outputs of one analysis, in :data:`ANALYSIS_NAMES` order (those of
    :data:`app.view_reuse.STATIC_OUTPUTS` skipped when the view stays the same)."""
    skip = STATIC_OUTPUTS if same_view(previous, request, result) else frozenset()
    return tuple(
        gr.skip() if name in skip else draw(result, request) for name, draw in ANALYSIS_VIEW
    )


def analyse(
    client: AttentionClient,
    image: str | None,
    model: str | None,
    image_size: float,
    resize: str,
    threshold: float,
    gt_mask: str | None = None,
    layer: float | None = None,
    query: str | None = None,
    heads: list[Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> AnalysisView:
    """Image, per-head overlays, mean, masks, coverage table, best-head text, status line, state;
    then the query patch's maps, the colour composite of ``heads`` and the PCA.

    ``layer`` (block), ``query`` ("row,col") and ``heads`` come from the Explore tab's controls.
    With ``previous`` (the analysis on screen), a reply that only changed the threshold, heads or
    ground truth updates the masks, table, texts and composite and skips the pictures that stay
    the same.
    """
    check_inputs(image, threshold, image_size)
    assert image is not None
    base = request_record(image, model, image_size, resize, threshold, gt_mask)

    def run() -> AnalysisView:
        shape = model_shape(client, model, previous) if heads else (None, None)
        request = {**base, **explore_request(shape, layer, query, heads)}
        result = call_attention(client, image, model, request, gt_mask)
        return _view(result, request, previous)

    return readable_errors("analyse the image", run)


def rerun_on_change(
    client: AttentionClient, image: str | None, *rest: Any, **named: Any
) -> AnalysisView:
    """:func:`analyse`, with the same arguments, when an image is there (threshold, block,
    heads, mask changed); else nothing."""
    if not image:
        return tuple(gr.skip() for _ in ANALYSIS_NAMES)
    return analyse(client, image, *rest, **named)


def patch_at(state: dict[str, Any] | None, x: float, y: float) -> str:
    """The ``"row,col"`` of the patch under pixel (x, y) of the processed image on screen."""
    if not state or "result" not in state:
        raise gr.Error(
            NO_QUERY_BASE, title="No analysis", duration=ERROR_TOAST_S, print_exception=False
        )
    result = state["result"]
    patch = int(result["patch_size"])
    gh, gw = result["grid"]
    row = min(max(int(y) // patch, 0), gh - 1)
    col = min(max(int(x) // patch, 0), gw - 1)
    return f"{row},{col}"


def download(state: dict[str, Any] | None, out_dir: str | Path | None = None) -> str:
    """Path of a ZIP (overlay PNGs, attention.npz, result.json) of the analysis on screen."""
    if not state or "result" not in state:
        raise gr.Error(
            NO_ANALYSIS, title="No analysis", duration=ERROR_TOAST_S, print_exception=False
        )
    return str(
        readable_errors(
            "build the download", lambda: build_zip(state["result"], state["request"], out_dir)
        )
    )


def stale_view(
    analysis: dict[str, Any] | None, model: str | None, layer: float | None, query: str | None
) -> tuple[str, str]:
    """(status line, note above the panels) after a failed analysis: the panels keep the last
    good result, and both say which one it is next to what the controls now ask for."""
    asked = f"model {model or 'default'}, block {'last' if layer in (None, -1) else int(layer)}"
    asked += f", query patch {query}" if query else ""
    failed = f"the request for {asked} failed (the message says why and what to do)"
    if not analysis or "result" not in analysis:
        return f"No result yet: {failed}.", ""
    result, request = analysis["result"], analysis.get("request", {})
    shown = f"**{result['model']}**, block {result.get('layer', 'last')}"
    shown += f", query patch {request['query']}" if request.get("query") else ""
    note = (
        f"**Last good result** ({shown}), kept on screen: {failed}. These pictures are not "
        "of the controls' current settings."
    )
    return f"Last good result: {rendering.status_text(result)} Then {failed}.", note
