"""The page: ``build_demo(client)`` lays out the explorer and wires each event with a stable api_name.

API names (for ``gradio_client`` and other programs): ``models``, ``analyze``, ``threshold``,
``compare``, ``download``, ``model_size`` (the size control for a model: its default, in patch steps),
``video``, ``video_cancel`` (the Video tab, app/video_tab.py); the explorer's ``block`` (Block
slider released), ``heads`` (composite heads ticked), ``query`` (a patch typed as row,col),
``clear`` (back to the CLS token), ``model_controls`` (Block range and head boxes of a model).
Clicking the image picks the query patch (the ``query`` endpoint does the same from a program).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from app import handlers
from app.client import RESIZE_MODES
from app.handlers import AttentionClient
from app.video_tab import build_video_tab

TITLE = "DINO attention explorer"
INTRO = (
    "Self-attention of the CLS token, per head, in the last block or any other (Caron et al. 2021, "
    "*Emerging Properties in Self-Supervised Vision Transformers*); click the image to see what one patch "
    "attends to. The mask of a head keeps the smallest set of patches holding `threshold` of its attention "
    "mass."
)
# The service draws heat maps with matplotlib's "inferno" (trainer.model.attention_maps); these are its stops.
INFERNO_STOPS = "#000004, #210c4a, #57106e, #8a226a, #bc3754, #e45a31, #f98e09, #f9cb35, #fcffa4"
LEGEND_HTML = (
    '<div class="cmap-legend">Heat maps (each head scaled to its own min and max): low '
    '<span class="cmap-bar"></span> high attention</div>'
)
CSS = f"""
#status {{min-height: 2.5em}}
.dino-gallery .grid-wrap {{min-height: 0 !important; max-height: none !important}}
.dino-gallery .thumbnail-item {{aspect-ratio: auto !important; height: auto !important}}
.dino-gallery .thumbnail-lg > img {{height: auto !important; display: block}}
.cmap-legend {{font-size: 0.9em; display: flex; align-items: center; gap: 0.5em}}
.cmap-bar {{display: inline-block; width: 220px; height: 12px; border-radius: 2px;
           background: linear-gradient(to right, {INFERNO_STOPS})}}
.composite-legend {{display: flex; flex-wrap: wrap; gap: 0.8em; font-size: 0.9em}}
.swatch-item {{display: inline-flex; align-items: center; gap: 0.3em}}
.swatch {{display: inline-block; width: 14px; height: 14px; border-radius: 2px; border: 1px solid #444}}
#processed img {{cursor: crosshair}}
"""
OVERLAY_FORMAT = "jpeg"  # how the page hands pictures to the browser (fast to encode)
MAX_HEADS = (
    24  # head boxes before a model is picked (ViT-g has 24); heads a model lacks are ignored
)


def _explore_inputs(examples: Sequence[str | Path]) -> dict[str, Any]:
    """The left column: image, examples, ground truth, model and parameters, buttons."""
    c: dict[str, Any] = {}
    c["image"] = gr.Image(
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
    c["gt_mask"] = gr.Image(
        label="Ground-truth mask (optional, white = object)",
        type="filepath",
        image_mode="L",
        sources=["upload"],
        elem_id="gt-input",
        height=160,
    )
    c["model"] = gr.Dropdown(label="Model", choices=[], allow_custom_value=True, elem_id="model")
    c["image_size"] = gr.Slider(
        8, 1024, value=480, step=8, label="Image size (short side, px)", elem_id="image-size"
    )
    c["resize"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize")
    c["threshold"] = gr.Slider(
        0.05,
        1.0,
        value=0.6,
        step=0.05,
        label="Threshold (attention mass kept)",
        elem_id="threshold",
    )
    c["layer"] = gr.Slider(
        0,
        11,
        value=11,
        step=1,
        label="Block (0 = first; the paper shows the last)",
        elem_id="block",
    )
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


def _explore_outputs() -> dict[str, Any]:
    """The right column: what one analysis shows."""
    o: dict[str, Any] = {}
    with gr.Row():
        o["processed"] = gr.Image(
            label="Image (as the model sees it): click a patch to query it",
            type="pil",
            interactive=False,
            elem_id="processed",
            format=OVERLAY_FORMAT,
        )
        o["mean"] = gr.Image(
            label="Mean over heads",
            type="pil",
            interactive=False,
            elem_id="mean",
            format=OVERLAY_FORMAT,
        )
    o["heads"] = gr.Gallery(
        label="Attention per head",
        columns=3,
        format=OVERLAY_FORMAT,
        elem_id="heads",
        object_fit="contain",
        height="auto",
        elem_classes=["dino-gallery"],
    )
    gr.HTML(LEGEND_HTML)
    o["masks"] = gr.Gallery(
        label="Mask per head (kept part, outlined)",
        columns=3,
        format=OVERLAY_FORMAT,
        elem_id="masks",
        object_fit="contain",
        height="auto",
        elem_classes=["dino-gallery"],
    )
    o["table"] = gr.Dataframe(
        label="Mask coverage per head",
        interactive=False,
        elem_id="coverage",
        headers=["head", "coverage", "kept patches", "IoU"],
    )
    o["best"] = gr.Markdown(elem_id="best-head")
    o.update(_explore_panels())
    return o


def _explore_panels() -> dict[str, Any]:
    """The query patch's maps, the Figure 3 colour composite, and the feature PCA."""
    o: dict[str, Any] = {}
    with gr.Accordion("Query patch: what one patch attends to", open=True):
        o["query_caption"] = gr.Markdown(elem_id="query-caption")
        o["query_mean"] = gr.Image(
            label="Query patch: mean over heads",
            type="pil",
            interactive=False,
            elem_id="query-mean",
            format=OVERLAY_FORMAT,
        )
        o["query_heads"] = gr.Gallery(
            label="Query patch: attention per head",
            columns=3,
            format=OVERLAY_FORMAT,
            elem_id="query-heads",
            object_fit="contain",
            height="auto",
            elem_classes=["dino-gallery"],
        )
    with gr.Accordion("Composite: heads in colour (the paper's Figure 3)", open=True):
        o["heads_pick"] = gr.CheckboxGroup(  # narrowed to the model's heads when a model is picked
            label="Heads in the composite",
            choices=[(f"head {i}", i) for i in range(MAX_HEADS)],
            value=list(range(MAX_HEADS)),
            elem_id="composite-heads",
        )
        o["composite"] = gr.Image(
            label="Composite of the ticked heads' masks",
            type="pil",
            interactive=False,
            elem_id="composite",
            format=OVERLAY_FORMAT,
        )
        o["legend"] = gr.HTML(elem_id="composite-legend")
    with gr.Accordion("PCA of the block's patch features", open=True):
        with gr.Row():
            o["pca"] = gr.Image(
                label="First three components as RGB",
                type="pil",
                interactive=False,
                elem_id="pca",
                format=OVERLAY_FORMAT,
            )
            o["pca_fg"] = gr.Image(
                label="Foreground: first component > 0",
                type="pil",
                interactive=False,
                elem_id="pca-fg",
                format=OVERLAY_FORMAT,
            )
    return o


def _compare_tab() -> dict[str, Any]:
    o: dict[str, Any] = {}
    gr.Markdown(
        "Two models (or two checkpoints of one run) on the image, size and threshold of the Explore tab."
    )
    with gr.Row():
        o["model_a"] = gr.Dropdown(
            label="Model A", choices=[], allow_custom_value=True, elem_id="model-a"
        )
        o["model_b"] = gr.Dropdown(
            label="Model B", choices=[], allow_custom_value=True, elem_id="model-b"
        )
    o["run"] = gr.Button("Compare", variant="primary", elem_id="compare")
    o["status"] = gr.Markdown(elem_id="compare-status")
    o["mean"] = gr.Image(
        label="Mean over heads: A | B", type="pil", interactive=False, format="png"
    )
    o["heads"] = gr.Gallery(
        label="Head for head: A | B",
        columns=2,
        format="png",
        elem_id="compare-heads",
        object_fit="contain",
        height="auto",
        elem_classes=["dino-gallery"],
    )
    gr.HTML(LEGEND_HTML)
    o["table"] = gr.Dataframe(
        label="Coverage (and IoU) per head",
        interactive=False,
        headers=["head", "A coverage", "B coverage", "A IoU", "B IoU"],
    )
    return o


def build_demo(client: AttentionClient, examples: Sequence[str | Path] | None = None) -> gr.Blocks:
    """The explorer wired to ``client``; ``examples`` are image paths shown under the upload."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        status = gr.Markdown(
            f"Connecting to the attention service at {client.base_url} ...", elem_id="status"
        )
        state = gr.State(None)
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    ins = _explore_inputs(examples or [])
                with gr.Column(scale=2):
                    outs = _explore_outputs()
        with gr.Tab("Compare"):
            cmp = _compare_tab()
        _wire(
            demo, client, ins, outs, cmp, status, state
        )  # first: its load event owns the api_name "models"
        with gr.Tab("Video"):
            build_video_tab(demo, client)  # type: ignore[arg-type]
    return demo


def _wire(
    demo: gr.Blocks,
    client: AttentionClient,
    ins: dict[str, Any],
    outs: dict[str, Any],
    cmp: dict[str, Any],
    status: Any,
    state: Any,
) -> None:
    params = [
        ins[k]
        for k in (
            "image",
            "model",
            "image_size",
            "resize",
            "threshold",
            "gt_mask",
            "layer",
            "query",
        )
    ]
    params.append(outs["heads_pick"])
    shown = [outs[k] for k in ("processed", "heads", "mean", "masks", "table", "best")] + [
        status,
        state,
    ]
    shown += [
        outs[k]
        for k in (
            "query_heads",
            "query_mean",
            "query_caption",
            "composite",
            "legend",
            "pca",
            "pca_fg",
        )
    ]

    def models() -> tuple[Any, Any, Any, str]:
        return handlers.list_models(client)

    def analyze(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
        layer: float | None = None,
        query: str | None = None,
        heads: list[int] | None = None,
    ) -> Any:
        return handlers.analyse(
            client, image, model, image_size, resize, threshold, gt_mask, layer, query, heads
        )

    def rerun(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
        layer: float | None = None,
        query: str | None = None,
        heads: list[int] | None = None,
    ) -> Any:
        return handlers.rerun_on_change(
            client, image, model, image_size, resize, threshold, gt_mask, layer, query, heads
        )

    def compare(
        image: str | None,
        model_a: str | None,
        model_b: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
    ) -> Any:
        return handlers.compare(
            client, image, model_a, model_b, image_size, resize, threshold, gt_mask
        )

    demo.load(
        models, outputs=[ins["model"], cmp["model_a"], cmp["model_b"], status], api_name="models"
    )
    ins["analyse"].click(analyze, params, shown, api_name="analyze", concurrency_limit=4)
    ins["image"].change(rerun, params, shown, api_visibility="private", trigger_mode="always_last")
    ins["gt_mask"].change(
        rerun, params, shown, api_visibility="private", trigger_mode="always_last"
    )
    _wire_explore(client, ins, outs, params, shown, state, rerun)

    def download(analysis: dict[str, Any] | None) -> str:
        return handlers.download(analysis)

    ins["download"].click(download, [state], [ins["zip"]], api_name="download")

    def model_size(model: str | None) -> Any:  # the size control follows the selected model
        return handlers.size_control(client, model)

    ins["model"].change(model_size, [ins["model"]], [ins["image_size"]], api_name="model_size")
    cmp["model_a"].change(
        model_size, [cmp["model_a"]], [ins["image_size"]], api_visibility="private"
    )
    cmp["run"].click(
        compare,
        [
            ins["image"],
            cmp["model_a"],
            cmp["model_b"],
            ins["image_size"],
            ins["resize"],
            ins["threshold"],
            ins["gt_mask"],
        ],
        [cmp["heads"], cmp["mean"], cmp["table"], cmp["status"]],
        api_name="compare",
    )


def _wire_explore(
    client: AttentionClient,
    ins: dict[str, Any],
    outs: dict[str, Any],
    params: list[Any],
    shown: list[Any],
    state: Any,
    rerun: Any,
) -> None:
    """Block slider, query patch (click, type, Clear), composite heads, and the model's control ranges."""

    def rethreshold(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
        layer: float | None = None,
        query: str | None = None,
        heads: list[int] | None = None,
        analysis: dict[str, Any] | None = None,
    ) -> Any:
        return handlers.rerun_on_change(
            client,
            image,
            model,
            image_size,
            resize,
            threshold,
            gt_mask,
            layer,
            query,
            heads,
            previous=analysis,
        )  # pictures that stay the same are not resent

    ins["layer"].release(rerun, params, shown, api_name="block", trigger_mode="always_last")
    ins["threshold"].release(
        rethreshold, [*params, state], shown, api_name="threshold", trigger_mode="always_last"
    )
    outs["heads_pick"].input(
        rethreshold, [*params, state], shown, api_name="heads", trigger_mode="always_last"
    )
    ins["query"].submit(rerun, params, shown, api_name="query", trigger_mode="always_last")

    def clear(*values: Any) -> Any:
        values = list(values)
        values[7] = ""  # the query box: back to the CLS token
        return ("", *handlers.rerun_on_change(client, *values))

    ins["clear"].click(clear, params, [ins["query"], *shown], api_name="clear")

    def on_select(
        analysis: dict[str, Any] | None,
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
        layer: float,
        query: str,
        heads: list[int] | None,
        evt: gr.SelectData,
    ) -> Any:
        query = handlers.patch_at(analysis, *evt.index[:2])
        return (
            query,
            *handlers.rerun_on_change(
                client, image, model, image_size, resize, threshold, gt_mask, layer, query, heads
            ),
        )

    outs["processed"].select(
        on_select,
        [state, *params],
        [ins["query"], *shown],
        api_visibility="private",
        trigger_mode="always_last",
    )

    def model_controls(model: str | None) -> Any:
        return handlers.explore_controls(client, model)

    ins["model"].change(
        model_controls,
        [ins["model"]],
        [ins["layer"], outs["heads_pick"]],
        api_name="model_controls",
    )


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    prevent_thread_lock: bool = False,
    **kwargs: Any,
) -> Any:
    """Start the page on ``host:port`` with the app's styling; no telemetry, no share link."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return demo.queue(default_concurrency_limit=4).launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        share=False,
        css=CSS,
        show_error=False,
        quiet=True,
        **kwargs,
    )
