"""The Compare tab: two models (or two checkpoints of one run) on the Explore tab's image, size
and threshold; api name ``compare``."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import compare_handlers, controls, model_handlers
from app.explore_tab import overlay_gallery, overlay_image
from app.handlers import AttentionClient, keep_on_failure
from app.model_handlers import PageSetup
from app.styles import LEGEND_HTML


def compare_tab(setup: PageSetup) -> dict[str, Any]:
    """Lay out the tab (call inside ``gr.Tab``); returns its components. The pictures carry
    their own titles (model A | model B), so their Gradio labels are hidden and headings above
    them say what they are."""
    o: dict[str, Any] = {}
    gr.Markdown(
        "Two models (or two checkpoints of one run) on the image, size and threshold of the "
        "Explore tab."
    )
    with gr.Row():
        o["model_a"] = controls.model_dropdown("model-a", setup, "Model A")
        o["model_b"] = controls.model_dropdown("model-b", setup, "Model B", setup.second)
    o["run"] = gr.Button("Compare", variant="primary", elem_id="compare")
    o["status"] = gr.Markdown(label="Compare status", elem_id="compare-status")
    gr.Markdown("#### Mean over heads: A | B")
    o["mean"] = overlay_image("Mean over heads: A | B", "compare-mean", fmt="png", show_label=False)
    gr.Markdown("#### Head for head: A | B")
    o["heads"] = overlay_gallery(
        "Head for head: A | B", "compare-heads", columns=2, fmt="png", show_label=False
    )
    gr.HTML(LEGEND_HTML)
    o["table"] = gr.Dataframe(
        label="Coverage (and IoU) per head",
        interactive=False,
        headers=["head", "A coverage", "B coverage", "A IoU", "B IoU"],
    )
    return o


def wire_compare(client: AttentionClient, ins: dict[str, Any], cmp: dict[str, Any]) -> None:
    """Model A sets the size control (privately); the Compare button runs ``compare``."""

    def model_size(model: str | None) -> Any:  # the size control follows model A
        return model_handlers.size_control(client, model)

    def compare(
        image: str | None,
        model_a: str | None,
        model_b: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None = None,
    ) -> Any:
        return compare_handlers.compare(
            client, image, model_a, model_b, image_size, resize, threshold, gt_mask
        )

    cmp["model_a"].input(
        model_size, [cmp["model_a"]], [ins["image_size"]], api_visibility="private"
    )
    explore_inputs = ("image_size", "resize", "threshold", "gt_mask")
    event = cmp["run"].click(
        compare,
        [ins["image"], cmp["model_a"], cmp["model_b"], *(ins[k] for k in explore_inputs)],
        [cmp["heads"], cmp["mean"], cmp["table"], cmp["status"]],
        api_name="compare",
        show_progress_on=[cmp["status"]],
    )
    keep_on_failure(event, cmp["status"])
