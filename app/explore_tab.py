"""The Explore tab's layout: the inputs on the left, one analysis's pictures and panels on the
right (the events are wired in app/explore_events.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from app import controls
from app.client import RESIZE_MODES
from app.components import HeadBoxes, ImageUpload, ServiceSlider
from app.model_handlers import PageSetup
from app.styles import LEGEND_HTML

OVERLAY_FORMAT = "jpeg"  # how the page hands pictures to the browser (fast to encode)


def overlay_image(
    label: str, elem_id: str | None = None, fmt: str = OVERLAY_FORMAT, show_label: bool = True
) -> Any:
    """A read-only picture of an analysis (``label`` names it in the API even when hidden)."""
    return gr.Image(
        label=label,
        type="pil",
        interactive=False,
        elem_id=elem_id,
        format=fmt,
        show_label=show_label,
    )


def overlay_gallery(
    label: str,
    elem_id: str,
    columns: int = 3,
    fmt: str = OVERLAY_FORMAT,
    show_label: bool = True,
) -> Any:
    """A gallery of per-head pictures, each shown whole at its own aspect ratio."""
    return gr.Gallery(
        label=label,
        show_label=show_label,
        columns=columns,
        format=fmt,
        elem_id=elem_id,
        object_fit="contain",
        height="auto",
        elem_classes=["dino-gallery"],
    )


def _image_inputs(examples: Sequence[str | Path]) -> dict[str, Any]:
    """The image, its offline examples and the optional ground-truth mask."""
    c: dict[str, Any] = {}
    c["image"] = ImageUpload(
        label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="image-input"
    )
    if examples:
        gr.Examples(
            examples=[[str(p)] for p in examples],
            inputs=[c["image"]],
            label="Examples (offline)",
            example_labels=[Path(p).stem for p in examples],
            elem_id="examples",
        )
    c["gt_mask"] = ImageUpload(
        label="Ground-truth mask (optional, white = object)",
        type="filepath",
        image_mode="L",
        sources=["upload"],
        elem_id="gt-input",
        height=160,
    )
    return c


def _parameter_inputs(setup: PageSetup) -> dict[str, Any]:
    """Model, image size, resize mode, threshold and block (-1, the default, is the last block
    of any model; a value the model lacks gets the service's message naming its range)."""
    c: dict[str, Any] = {}
    c["model"] = controls.model_dropdown("model", setup)
    c["image_size"] = controls.image_size_slider("image-size", setup)
    c["resize"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize")
    c["threshold"] = controls.threshold_slider("threshold")
    c["layer"] = ServiceSlider(
        -1,
        setup.depth - 1,
        value=-1,
        step=1,
        label="Block (0 = first, -1 = last; the paper shows the last)",
        elem_id="block",
    )
    return c


def _action_inputs() -> dict[str, Any]:
    """The query patch box with Clear, then Analyse, Download ZIP and the ZIP itself."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["query"] = gr.Textbox(
            label="Query patch (row,col): click the image",
            value="",
            elem_id="query",
            placeholder="CLS token",
            scale=3,
        )
        c["clear"] = gr.Button("Clear", elem_id="clear-query", scale=1, min_width=60)
    c["analyse"] = gr.Button("Analyse", variant="primary", elem_id="analyse")
    c["download"] = gr.Button("Download ZIP", elem_id="download")
    c["zip"] = gr.File(
        label="ZIP: overlays, attention.npz, result.json", elem_id="zip", interactive=False
    )
    return c


def explore_inputs(examples: Sequence[str | Path], setup: PageSetup) -> dict[str, Any]:
    """The left column: image, examples, ground truth, model and parameters, buttons."""
    return {**_image_inputs(examples), **_parameter_inputs(setup), **_action_inputs()}


def explore_outputs(setup: PageSetup) -> dict[str, Any]:
    """The right column: what one analysis shows (under a note, shown only when the pictures
    are a last good result that a failed request left on screen)."""
    o: dict[str, Any] = {}
    o["stale"] = gr.Markdown("", label="Last good result note", visible=False, elem_id="stale-note")
    with gr.Row():
        o["processed"] = overlay_image(
            "Image (as the model sees it): click a patch to query it", "processed"
        )
        o["mean"] = overlay_image("Mean over heads", "mean")
    o["heads"] = overlay_gallery("Attention per head", "heads")
    gr.HTML(LEGEND_HTML)
    o["masks"] = overlay_gallery("Mask per head (kept part, outlined)", "masks")
    o["table"] = gr.Dataframe(
        label="Mask coverage per head",
        interactive=False,
        elem_id="coverage",
        headers=["head", "coverage", "kept patches", "IoU"],
    )
    o["best"] = gr.Markdown(label="Best head", elem_id="best-head")
    o.update(_query_panel())
    o.update(_composite_panel(setup))
    o.update(_pca_panel())
    o.update(_objects_panel())
    return o


def _objects_panel() -> dict[str, Any]:
    """LOST's box and seed on the photo (POST /objects), with the box IoU when a mask is given."""
    o: dict[str, Any] = {}
    with gr.Accordion("Objects: the main object's box, without labels (LOST)", open=False):
        with gr.Row():
            o["objects_method"] = gr.Radio(
                ["lost", "tokencut"], value="lost", label="Method", elem_id="objects-method"
            )
            o["objects_run"] = gr.Button("Find the object", elem_id="objects-run")
        o["objects_picture"] = overlay_image(
            "Box (green), seed patch (red), ground-truth box (white)", "objects", fmt="png"
        )
        o["objects_status"] = gr.Markdown(label="Objects status", elem_id="objects-status")
    return o


def _query_panel() -> dict[str, Any]:
    """The query patch's caption, mean map and per-head maps."""
    o: dict[str, Any] = {}
    with gr.Accordion("Query patch: what one patch attends to", open=True):
        o["query_caption"] = gr.Markdown(label="Query patch caption", elem_id="query-caption")
        o["query_mean"] = overlay_image("Query patch: mean over heads", "query-mean")
        o["query_heads"] = overlay_gallery("Query patch: attention per head", "query-heads")
    return o


def _composite_panel(setup: PageSetup) -> dict[str, Any]:
    """The Figure 3 colour composite of the ticked heads' masks, with its legend."""
    o: dict[str, Any] = {}
    with gr.Accordion("Composite: heads in colour (the paper's Figure 3)", open=True):
        o["heads_pick"] = HeadBoxes(  # the default model's heads; they follow the picked model
            label="Heads in the composite",
            choices=[(f"head {i}", i) for i in range(setup.heads)],
            value=list(range(setup.heads)),
            elem_id="composite-heads",
        )
        o["composite"] = overlay_image("Composite of the ticked heads' masks", "composite")
        o["legend"] = gr.HTML(label="Composite legend", elem_id="composite-legend")
    return o


def _pca_panel() -> dict[str, Any]:
    """The PCA of the block's patch features: three components as RGB, and the foreground."""
    o: dict[str, Any] = {}
    with gr.Accordion("PCA of the block's patch features", open=True):
        with gr.Row():
            o["pca"] = overlay_image("First three components as RGB", "pca")
            o["pca_fg"] = overlay_image("Foreground: first component > 0", "pca-fg")
    return o
