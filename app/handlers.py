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

from app import rendering
from app.client import BackendError
from app.export import build_zip

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_IMAGE = "Upload an image or pick one of the examples first."
NO_ANALYSIS = "Nothing to download yet: analyse an image first; the ZIP holds the analysis on screen."
LABEL_SUMMARY_CHARS = 80  # the model card summary is cut to this length in the dropdown


class AttentionClient(Protocol):
    """What the handlers need from :class:`app.client.BackendClient` (tests pass a fake)."""

    base_url: str

    def models(self) -> dict[str, Any]: ...

    def attention(self, image: Any, model: str | None = None, image_size: int = 480, resize: str = "keep_aspect",
                  threshold: float = 0.6, overlays: bool = True, gt_mask: Any = None) -> dict[str, Any]: ...


def readable_errors(action: str, call: Callable[[], T]) -> T:
    """Run ``call``; turn service and display failures into ``gr.Error`` naming ``action``."""
    try:
        return call()
    except gr.Error:
        raise
    except BackendError as exc:
        raise gr.Error(str(exc), title=f"Could not {action}", print_exception=False) from exc
    except rendering.RenderError as exc:
        raise gr.Error(f"The service's reply cannot be shown: {exc}", title=f"Could not {action}",
                       print_exception=False) from exc
    except (KeyError, TypeError, ValueError) as exc:
        log.exception("unexpected reply while trying to %s", action)
        raise gr.Error(f"The service's reply is not what the app expects ({type(exc).__name__}: {exc}); "
                       "is BACKEND_URL pointing at the attention service?", title=f"Could not {action}",
                       print_exception=False) from exc


def _check_inputs(image: str | None, threshold: float, image_size: float) -> None:
    if not image:
        raise gr.Error(NO_IMAGE, title="No image", print_exception=False)
    if not 0.0 < float(threshold) <= 1.0:
        raise gr.Error(f"threshold must be in (0, 1], got {threshold}", print_exception=False)
    if int(image_size) < 1:
        raise gr.Error(f"image size must be a positive number of pixels, got {image_size}", print_exception=False)


def _request(image: str, model: str | None, image_size: float, resize: str, threshold: float,
             gt_mask: str | None) -> dict[str, Any]:
    """The parameters of one analysis, as recorded in the download's result.json."""
    return {"image_name": Path(image).name, "model": model or None, "image_size": int(image_size),
            "resize": resize, "threshold": float(threshold),
            "gt_mask_name": Path(gt_mask).name if gt_mask else None}


def _call_attention(client: AttentionClient, image: str, model: str | None, request: dict[str, Any],
                    gt_mask: str | None) -> dict[str, Any]:
    return client.attention(image, model=model or None, image_size=request["image_size"], resize=request["resize"],
                            threshold=request["threshold"], overlays=True, gt_mask=gt_mask or None)


AnalysisView = tuple[Image.Image, rendering.GalleryItems, Image.Image, rendering.GalleryItems, pd.DataFrame,
                     str, str, dict[str, Any]]


def analyse(client: AttentionClient, image: str | None, model: str | None, image_size: float, resize: str,
            threshold: float, gt_mask: str | None = None) -> AnalysisView:
    """Image, per-head overlays, mean, masks, coverage table, best-head text, status line, state."""
    _check_inputs(image, threshold, image_size)
    assert image is not None
    request = _request(image, model, image_size, resize, threshold, gt_mask)

    def run() -> AnalysisView:
        result = _call_attention(client, image, model, request, gt_mask)
        return (rendering.processed_image(result), rendering.head_gallery(result), rendering.mean_overlay(result),
                rendering.mask_gallery(result), rendering.coverage_table(result), rendering.best_head_text(result),
                rendering.status_text(result), {"result": result, "request": request})

    return readable_errors("analyse the image", run)


def rerun_on_change(client: AttentionClient, image: str | None, model: str | None, image_size: float, resize: str,
                    threshold: float, gt_mask: str | None = None) -> AnalysisView | tuple[Any, ...]:
    """Like :func:`analyse` when an image is there (threshold moved, mask uploaded); else changes nothing."""
    if not image:
        return tuple(gr.skip() for _ in range(8))
    return analyse(client, image, model, image_size, resize, threshold, gt_mask)


def download(state: dict[str, Any] | None, out_dir: str | Path | None = None) -> str:
    """Path of a ZIP (overlay PNGs, attention.npz, result.json) of the analysis on screen."""
    if not state or "result" not in state:
        raise gr.Error(NO_ANALYSIS, title="No analysis", print_exception=False)
    return str(readable_errors("build the download", lambda: build_zip(state["result"], state["request"], out_dir)))


CompareView = tuple[rendering.GalleryItems, Image.Image, pd.DataFrame, str]


def _compare_table(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    n = max(len(a["coverage"]), len(b["coverage"]))

    def column(result: dict[str, Any], key: str) -> list[float | None]:
        values = result.get(key) or []
        return [round(float(values[i]), 4) if i < len(values) else None for i in range(n)]

    table = pd.DataFrame({"head": [rendering.head_label(i) for i in range(n)],
                          "A coverage": column(a, "coverage"), "B coverage": column(b, "coverage")})
    if a.get("iou") is not None or b.get("iou") is not None:
        table["A IoU"], table["B IoU"] = column(a, "iou"), column(b, "iou")
    return table


def compare(client: AttentionClient, image: str | None, model_a: str | None, model_b: str | None,
            image_size: float, resize: str, threshold: float, gt_mask: str | None = None) -> CompareView:
    """Two models on the same image: head i of A beside head i of B, the means, and a table."""
    _check_inputs(image, threshold, image_size)
    assert image is not None
    if not model_a or not model_b:
        raise gr.Error("Pick a model A and a model B to compare.", title="No models", print_exception=False)
    request = _request(image, None, image_size, resize, threshold, gt_mask)

    def run() -> CompareView:
        a = _call_attention(client, image, model_a, request, gt_mask)
        b = _call_attention(client, image, model_b, request, gt_mask)
        heads_a = [im for im, _ in rendering.head_gallery(a)]
        heads_b = [im for im, _ in rendering.head_gallery(b)]
        title_a, title_b = f"A: {a['model']}", f"B: {b['model']}"
        pairs = []
        for i in range(max(len(heads_a), len(heads_b))):
            left = heads_a[i] if i < len(heads_a) else None
            right = heads_b[i] if i < len(heads_b) else None
            pairs.append((rendering.side_by_side(left, right, title_a, title_b), rendering.head_label(i)))
        means = rendering.side_by_side(rendering.mean_overlay(a), rendering.mean_overlay(b),
                                       f"{title_a} (mean)", f"{title_b} (mean)")
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
    return (f"Connected to {base_url}: {len(catalog['models'])} model(s). Default **{default['id']}**: "
            f"{rendering.weights_text(default.get('trained'), default.get('summary'))}. "
            "Upload an image or pick an example.")


def list_models(client: AttentionClient) -> tuple[Any, Any, Any, str]:
    """Fill the model dropdowns (main, compare A, compare B) from ``GET /models``; and a status line."""
    catalog = readable_errors("list the models", client.models)
    ids = [m["id"] for m in catalog["models"] if "id" in m]
    if not ids:
        raise gr.Error(f"The service at {client.base_url} offers no models; put a checkpoint in checkpoints/ "
                       "or allow downloads (DINO_ALLOW_DOWNLOADS=true).", print_exception=False)
    choices = [(model_label(m), m["id"]) for m in catalog["models"] if "id" in m]
    default = catalog.get("default") if catalog.get("default") in ids else ids[0]
    return (gr.Dropdown(choices=choices, value=default), gr.Dropdown(choices=choices, value=default),
            gr.Dropdown(choices=choices, value=second_model(catalog, default)), catalog_text(catalog, client.base_url))


def second_model(catalog: dict[str, Any], default: str) -> str:
    """Model B of the comparison: preferably one usable without a download (loaded, or a local file)."""
    others = [m for m in catalog["models"] if m.get("id") and m["id"] != default and m.get("available", True)]
    local = [m for m in others if m.get("loaded") or m.get("source") in ("file", "placeholder")]
    return (local or others or [{"id": default}])[0]["id"]
