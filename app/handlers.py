"""What the page's events do: plain functions of a client and the inputs, returning what to show.

Every failure surfaces as ``gr.Error`` with a readable message (never a traceback): a missing
image, an unreachable or busy service, a rejected upload, a reply that cannot be displayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import gradio as gr
import pandas as pd
from PIL import Image

from app import model_info, rendering
from app.client import BackendError
from app.export import build_zip

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_IMAGE = "Upload an image or pick one of the examples first."
NO_ANALYSIS = (
    "Nothing to download yet: analyse an image first; the ZIP holds the analysis on screen."
)
NO_QUERY_BASE = "Analyse an image first, then click it to pick the query patch."
LABEL_SUMMARY_CHARS = 80  # the model card summary is cut to this length in the dropdown


class AttentionClient(Protocol):
    """What the handlers need from :class:`app.client.BackendClient` (tests pass a fake)."""

    base_url: str

    def models(self) -> dict[str, Any]: ...

    def attention(
        self,
        image: Any,
        model: str | None = None,
        image_size: int = 480,
        resize: str = "keep_aspect",
        threshold: float = 0.6,
        overlays: bool = True,
        gt_mask: Any = None,
        **explore: Any,
    ) -> dict[str, Any]: ...


def readable_errors(action: str, call: Callable[[], T]) -> T:
    """Run ``call``; turn service and display failures into ``gr.Error`` naming ``action``."""
    try:
        return call()
    except gr.Error:
        raise
    except BackendError as exc:
        raise gr.Error(str(exc), title=f"Could not {action}", print_exception=False) from exc
    except rendering.RenderError as exc:
        raise gr.Error(
            f"The service's reply cannot be shown: {exc}",
            title=f"Could not {action}",
            print_exception=False,
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        log.exception("unexpected reply while trying to %s", action)
        raise gr.Error(
            f"The service's reply is not what the app expects ({type(exc).__name__}: {exc}); "
            "is BACKEND_URL pointing at the attention service?",
            title=f"Could not {action}",
            print_exception=False,
        ) from exc


def _check_inputs(image: str | None, threshold: float, image_size: float) -> None:
    if not image:
        raise gr.Error(NO_IMAGE, title="No image", print_exception=False)
    if not 0.0 < float(threshold) <= 1.0:
        raise gr.Error(f"threshold must be in (0, 1], got {threshold}", print_exception=False)
    if int(image_size) < 1:
        raise gr.Error(
            f"image size must be a positive number of pixels, got {image_size}",
            print_exception=False,
        )


def _request(
    image: str,
    model: str | None,
    image_size: float,
    resize: str,
    threshold: float,
    gt_mask: str | None,
) -> dict[str, Any]:
    """The parameters of one analysis, as recorded in the download's result.json."""
    return {
        "image_name": Path(image).name,
        "model": model or None,
        "image_size": int(image_size),
        "resize": resize,
        "threshold": float(threshold),
        "gt_mask_name": Path(gt_mask).name if gt_mask else None,
    }


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
            print_exception=False,
        )
    return [int(p) for p in parts]


def model_shape(
    client: AttentionClient, model: str | None, previous: dict[str, Any] | None = None
) -> tuple[int | None, int | None]:
    """(blocks, heads) of ``model`` (None: the default): from the analysis on screen when it is of the same
    model, else from ``GET /models``; None for what is not known."""
    shown = (previous or {}).get("result") or {}
    if shown.get("depth") and (previous or {}).get("request", {}).get("model") == (model or None):
        return int(shown["depth"]), int(shown["num_heads"])
    catalog = client.models()
    model_id = model or catalog.get("default")
    entry = next((m for m in catalog.get("models", []) if m.get("id") == model_id), None) or {}
    depth, heads = entry.get("depth"), entry.get("num_heads")
    return (int(depth) if depth else None), (int(heads) if heads else None)


def explore_request(
    shape: tuple[int | None, int | None],
    layer: float | None,
    query: str | None,
    heads: list[Any] | None,
) -> dict[str, Any]:
    """The explorer's fields of one analysis: block, query patch, composite heads (None: all).

    A block past the model's last (the slider's default before it learnt this model's depth) or None
    means the last block (-1); ticked heads the model does not have are left out.
    """
    depth, num_heads = shape
    block = -1 if layer is None or (depth is not None and int(layer) >= depth) else int(layer)
    chosen = (
        None
        if heads is None
        else sorted({int(h) for h in heads if num_heads is None or int(h) < num_heads})
    )
    return {"layer": block, "query": parse_query(query), "heads": chosen}


def _call_attention(
    client: AttentionClient,
    image: str,
    model: str | None,
    request: dict[str, Any],
    gt_mask: str | None,
) -> dict[str, Any]:
    explore: dict[str, Any] = {}
    if "layer" in request:  # the Explore tab: block, query, composite and PCA, fast overlays
        explore = {
            "layer": request["layer"],
            "query": request["query"],
            "heads": request["heads"] or None,
            "composite": request["heads"] != [],
            "pca": True,
            "overlay_format": APP_OVERLAY_FORMAT,
        }
    return client.attention(
        image,
        model=model or None,
        image_size=request["image_size"],
        resize=request["resize"],
        threshold=request["threshold"],
        overlays=True,
        gt_mask=gt_mask or None,
        **explore,
    )


AnalysisView = tuple[Any, ...]
ANALYSIS_OUTPUTS = 15  # the 8 of the CLS view, then the query, composite and PCA panels
APP_OVERLAY_FORMAT = "jpeg"  # the fastest of the service's overlay formats to encode
STATIC_OUTPUTS = (
    0,
    1,
    2,
    8,
    9,
    10,
    13,
    14,
)  # what a threshold, heads or gt_mask change leaves as it is
_VIEW_KEYS = ("image_name", "model", "image_size", "resize", "layer", "query")


def same_view(
    previous: dict[str, Any] | None, request: dict[str, Any], result: dict[str, Any]
) -> bool:
    """Whether ``result`` differs from the analysis on screen only in what a threshold or head choice changes."""
    if not previous or "request" not in previous or not result.get("cached"):
        return False
    before, shown = previous["request"], previous.get("result") or {}
    return (
        all(before.get(k) == request.get(k) for k in _VIEW_KEYS)
        and shown.get("model") == result.get("model")
        and shown.get("overlay_mime") == result.get("overlay_mime")
    )


def _view(
    result: dict[str, Any], request: dict[str, Any], previous: dict[str, Any] | None
) -> AnalysisView:
    """The 15 outputs of one analysis (:data:`STATIC_OUTPUTS` skipped when the view stays the same)."""
    skip = STATIC_OUTPUTS if same_view(previous, request, result) else ()
    items = [
        lambda: rendering.processed_image(result),
        lambda: rendering.head_gallery(result),
        lambda: rendering.mean_overlay(result),
        lambda: rendering.mask_gallery(result),
        lambda: rendering.coverage_table(result),
        lambda: rendering.best_head_text(result),
        lambda: rendering.status_text(result),
        lambda: {"result": result, "request": request},
        lambda: rendering.query_gallery(result),
        lambda: rendering.optional_overlay(result, "query_mean"),
        lambda: rendering.query_text(result),
        lambda: rendering.optional_overlay(result, "composite"),
        lambda: rendering.composite_legend(result),
        lambda: rendering.optional_overlay(result, "pca"),
        lambda: rendering.optional_overlay(result, "pca_fg"),
    ]
    return tuple(gr.skip() if i in skip else make() for i, make in enumerate(items))


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
    """Image, per-head overlays, mean, masks, coverage table, best-head text, status line, state; then
    the query patch's maps, the colour composite of ``heads`` and the PCA.

    ``layer`` (block), ``query`` ("row,col") and ``heads`` come from the Explore tab's controls. With
    ``previous`` (the analysis on screen), a reply that only changed the threshold, heads or ground truth
    updates the masks, table, texts and composite and skips the pictures that stay the same.
    """
    _check_inputs(image, threshold, image_size)
    assert image is not None
    base = _request(image, model, image_size, resize, threshold, gt_mask)

    def run() -> AnalysisView:
        shape = model_shape(client, model, previous) if layer is not None or heads else (None, None)
        request = {**base, **explore_request(shape, layer, query, heads)}
        result = _call_attention(client, image, model, request, gt_mask)
        return _view(result, request, previous)

    return readable_errors("analyse the image", run)


def rerun_on_change(
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
    """Like :func:`analyse` when an image is there (threshold, block, heads, mask changed); else nothing."""
    if not image:
        return tuple(gr.skip() for _ in range(ANALYSIS_OUTPUTS))
    return analyse(
        client, image, model, image_size, resize, threshold, gt_mask, layer, query, heads, previous
    )


def patch_at(state: dict[str, Any] | None, x: float, y: float) -> str:
    """The ``"row,col"`` of the patch under pixel (x, y) of the processed image on screen."""
    if not state or "result" not in state:
        raise gr.Error(NO_QUERY_BASE, title="No analysis", print_exception=False)
    result = state["result"]
    patch, (gh, gw) = int(result["patch_size"]), result["grid"]
    row = min(max(int(y) // patch, 0), gh - 1)
    col = min(max(int(x) // patch, 0), gw - 1)
    return f"{row},{col}"


def explore_controls(client: AttentionClient, model_id: str | None) -> tuple[Any, Any]:
    """The Block slider (0 .. depth-1, at the last block) and the head boxes (all ticked) for ``model_id``."""
    if not model_id:
        return gr.skip(), gr.skip()
    catalog = readable_errors("list the models", client.models)
    entry = next((m for m in catalog["models"] if m.get("id") == model_id), None)
    if entry is None:
        return gr.skip(), gr.skip()
    depth = int(entry.get("depth") or 12)
    heads = int(entry.get("num_heads") or 1)
    choices = [(rendering.head_label(i), i) for i in range(heads)]
    return (
        gr.Slider(minimum=0, maximum=depth - 1, step=1, value=depth - 1),
        gr.CheckboxGroup(choices=choices, value=list(range(heads))),
    )


def download(state: dict[str, Any] | None, out_dir: str | Path | None = None) -> str:
    """Path of a ZIP (overlay PNGs, attention.npz, result.json) of the analysis on screen."""
    if not state or "result" not in state:
        raise gr.Error(NO_ANALYSIS, title="No analysis", print_exception=False)
    return str(
        readable_errors(
            "build the download", lambda: build_zip(state["result"], state["request"], out_dir)
        )
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
        table["A IoU"], table["B IoU"] = column(a, "iou"), column(b, "iou")
    for name, result in (("A", a), ("B", b)):
        share = model_info.register_share(result)
        if share is not None:  # the attention a register model's CLS gave its registers
            table[f"{name} to registers"] = [share[i] if i < len(share) else None for i in range(n)]
    return table


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
    _check_inputs(image, threshold, image_size)
    assert image is not None
    if not model_a or not model_b:
        raise gr.Error(
            "Pick a model A and a model B to compare.", title="No models", print_exception=False
        )
    request = _request(image, None, image_size, resize, threshold, gt_mask)

    def run() -> CompareView:
        a = _call_attention(client, image, model_a, request, gt_mask)
        b = _call_attention(client, image, model_b, request, gt_mask)
        heads_a = [im for im, _ in rendering.head_gallery(a)]
        heads_b = [im for im, _ in rendering.head_gallery(b)]
        title_a, title_b = model_info.model_title("A", a), model_info.model_title("B", b)
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

    return readable_errors("compare the models", run)


def model_label(entry: dict[str, Any]) -> str:
    """Dropdown text of one /models entry: id, architecture, trained or placeholder, short model card."""
    trained = entry.get("trained", True)
    kind = "trained" if trained else "random-init placeholder"
    label = f"{entry['id']} ({entry.get('arch', '?')}/{entry.get('patch_size', '?')}, {kind})"
    card = rendering.card_text(entry.get("summary"), LABEL_SUMMARY_CHARS) if trained else ""
    if card:
        label += f": {card}"
    if entry.get("available") is False:
        label += f" - unavailable: {entry.get('error') or 'not loadable'}"
    return label


def catalog_text(catalog: dict[str, Any], base_url: str) -> str:
    default = next((m for m in catalog["models"] if m.get("id") == catalog.get("default")), None)
    if default is None:
        return f"Connected to {base_url}: {len(catalog['models'])} models, no default model."
    return (
        f"Connected to {base_url}: {len(catalog['models'])} model(s). Default **{default['id']}**: "
        f"{rendering.weights_text(default.get('trained'), default.get('summary'))}. "
        "Upload an image or pick an example."
    )


def list_models(client: AttentionClient) -> tuple[Any, Any, Any, str]:
    """Fill the model dropdowns (main, compare A, compare B) from ``GET /models``; and a status line."""
    catalog = readable_errors("list the models", client.models)
    ids = [m["id"] for m in catalog["models"] if "id" in m]
    if not ids:
        raise gr.Error(
            f"The service at {client.base_url} offers no models; put a checkpoint in checkpoints/ "
            "or allow downloads (DINO_ALLOW_DOWNLOADS=true).",
            print_exception=False,
        )
    choices = [(model_label(m), m["id"]) for m in catalog["models"] if "id" in m]
    default = catalog.get("default") if catalog.get("default") in ids else ids[0]
    return (
        gr.Dropdown(choices=choices, value=default),
        gr.Dropdown(choices=choices, value=default),
        gr.Dropdown(choices=choices, value=second_model(catalog, default)),
        catalog_text(catalog, client.base_url),
    )


def second_model(catalog: dict[str, Any], default: str) -> str:
    """Model B of the comparison: preferably one usable without a download (loaded, or a local file)."""
    others = [
        m
        for m in catalog["models"]
        if m.get("id") and m["id"] != default and m.get("available", True)
    ]
    local = [m for m in others if m.get("loaded") or m.get("source") in ("file", "placeholder")]
    return (local or others or [{"id": default}])[0]["id"]


def size_control(client: AttentionClient, model_id: str | None) -> Any:
    """The image-size slider for ``model_id``: its default size (DINO 480, DINOv2 518), in patch steps."""
    if not model_id:
        return gr.skip()
    catalog = readable_errors("list the models", client.models)
    entry = next((m for m in catalog["models"] if m.get("id") == model_id), None)
    if entry is None:
        return gr.skip()
    value, step, top = model_info.size_settings(entry)
    return gr.Slider(minimum=step, maximum=top, step=step, value=value)
