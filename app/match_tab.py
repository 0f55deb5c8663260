"""The Match tab: two images, their best-buddy correspondences, and a click in A shows where that
patch is in B (api names ``match`` and ``match_point``). Model and size are the Explore tab's."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from app import match_handlers
from app.components import ImageUpload, ServiceSlider
from app.handlers import ERROR_TOAST_S, AttentionClient, keep_on_failure
from app.model_handlers import PageSetup

FACETS = ["key", "query", "value", "token"]


def match_tab(setup: PageSetup) -> dict[str, Any]:
    """Lay out the tab (call inside ``gr.Tab``); returns its components."""
    o: dict[str, Any] = {}
    gr.Markdown(
        "Dense correspondences from the patch features (Amir et al. 2021): the lines join "
        "best buddies, mutual nearest neighbours. Click a point in A to see where it is in B. "
        "Model and size come from the Explore tab."
    )
    with gr.Row():
        o["image_a"] = ImageUpload(label="A (click a point)", type="filepath", elem_id="match-a")
        o["image_b"] = ImageUpload(label="B", type="filepath", elem_id="match-b")
    with gr.Row():
        o["facet"] = gr.Dropdown(FACETS, value="key", label="Facet", elem_id="match-facet")
        o["layer"] = ServiceSlider(
            -setup.depth,
            setup.depth - 1,
            value=-1,
            step=1,
            label="Block (-1: last)",
            elem_id="match-block",
        )
        o["top_k"] = gr.Slider(1, 100, value=20, step=1, label="Best buddies shown")
    o["run"] = gr.Button("Match", variant="primary", elem_id="match-run")
    o["status"] = gr.Markdown(label="Match status", elem_id="match-status")
    with gr.Row():
        o["pairs"] = gr.Image(label="Best buddies: A | B", type="pil", interactive=False)
        o["where"] = gr.Image(
            label="Similarity to the clicked patch, best match boxed",
            type="pil",
            interactive=False,
            elem_id="match-where",
        )
    return o


def wire_match(client: AttentionClient, ins: dict[str, Any], o: dict[str, Any]) -> None:
    """``match``: the pairs; ``match_point``: a click in A, the similarity map of B too."""
    controls = [ins["model"], ins["image_size"], o["facet"], o["layer"], o["top_k"]]

    def match(
        image_a: str | None,
        image_b: str | None,
        model: str | None,
        image_size: float,
        facet: str,
        layer: float,
        top_k: float,
    ) -> tuple[Any, str]:
        pairs, _, status, _ = match_handlers.run_match(
            client, image_a, image_b, model, image_size, facet, layer, top_k
        )
        return pairs, status

    def point(
        image_a: str | None,
        image_b: str | None,
        model: str | None,
        image_size: float,
        facet: str,
        layer: float,
        top_k: float,
        evt: gr.EventData,
    ) -> tuple[Any, Any, str]:
        click = getattr(evt, "_data", None) or {}  # a program's call carries no click
        if not isinstance(click, dict) or not click.get("index"):
            raise gr.Error(
                "match_point answers a click on image A in the page; a program can call "
                "POST /match with query=row,col (docs/API.md), or /match here for the pairs.",
                title="No click",
                duration=ERROR_TOAST_S,
                print_exception=False,
            )
        size = Image.open(image_a).size if image_a else (1, 1)
        patch = _patch_size(client, model)
        query = match_handlers.patch_of_click(tuple(click["index"]), size, int(image_size), patch)
        pairs, heat, status, _ = match_handlers.run_match(
            client, image_a, image_b, model, image_size, facet, layer, top_k, query
        )
        return pairs, heat, status

    progress = {"show_progress_on": [o["status"]]}
    run = o["run"].click(
        match,
        [o["image_a"], o["image_b"], *controls],
        [o["pairs"], o["status"]],
        api_name="match",
        **progress,
    )
    click = o["image_a"].select(
        point,
        [o["image_a"], o["image_b"], *controls],
        [o["pairs"], o["where"], o["status"]],
        api_name="match_point",
        **progress,
    )
    for event in (run, click):
        keep_on_failure(event, o["status"])


def _patch_size(client: AttentionClient, model: str | None) -> int:
    """The patch size of ``model`` (the default model when empty) from ``GET /models``."""
    listing = client.models()
    wanted = model or listing.get("default")
    for entry in listing["models"]:
        if entry["id"] == wanted and entry.get("patch_size"):
            return int(entry["patch_size"])
    return 16
