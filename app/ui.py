"""The page: ``build_demo(client)`` lays out the explorer and wires each event with a stable
api_name, named parameters and named outputs (every component has a label).

API names (for ``gradio_client`` and other programs): ``models``, ``analyze``, ``threshold``,
``compare``, ``download``, ``model_size`` (the size control for a model: its default, in patch
steps, up to the service's limit), ``video``, ``video_cancel`` (the Video tab,
app/video_tab.py); the explorer's ``block`` (Block slider released), ``heads`` (composite heads
ticked), ``query`` (a patch typed as row,col), ``clear`` (back to the CLS token),
``model_controls`` (Block range and head boxes of a model); ``match`` and ``match_point`` (the
Match tab) and ``objects`` (the Objects panel). Clicking the image picks the query patch (the
``query`` endpoint does the same from a program). The page is built with the service's model ids,
the default model's blocks and heads, and the service's largest image size
(:func:`app.model_handlers.page_setup`). The tabs live in app/explore_tab.py (events:
app/explore_events.py), app/compare_tab.py, app/match_tab.py and app/video_tab.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from app import model_handlers
from app.compare_tab import compare_tab, wire_compare
from app.explore_events import wire_explore
from app.explore_tab import explore_inputs, explore_outputs
from app.handlers import AttentionClient
from app.match_tab import match_tab, wire_match
from app.objects_panel import wire_objects
from app.styles import CSS
from app.video_tab import build_video_tab

TITLE = "DINO attention explorer"
INTRO = (
    "Self-attention of the CLS token, per head, in the last block or any other (Caron et al. "
    "2021, *Emerging Properties in Self-Supervised Vision Transformers*); click the image to see "
    "what one patch attends to. The mask of a head keeps the smallest set of patches holding "
    "`threshold` of its attention mass."
)


def build_demo(client: AttentionClient, examples: Sequence[str | Path] | None = None) -> gr.Blocks:
    """The explorer wired to ``client``; ``examples`` are image paths shown under the upload."""
    setup = model_handlers.page_setup(client)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        status = gr.Markdown(
            f"Connecting to the attention service at {client.base_url} ...",
            label="Status",
            elem_id="status",
        )
        banner = gr.Markdown("", label="Untrained model", visible=False, elem_id="untrained-banner")
        state = gr.State(None)
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    ins = explore_inputs(examples or [], setup)
                with gr.Column(scale=2):
                    outs = explore_outputs(setup)
        with gr.Tab("Compare"):
            cmp = compare_tab(setup)
        with gr.Tab("Match"):
            matching = match_tab(setup)
        # first: its load event owns the api_name "models"
        _wire(demo, client, ins, outs, cmp, status, state, banner)
        wire_match(client, ins, matching)
        wire_objects(client, ins, outs)
        with gr.Tab("Video"):
            build_video_tab(demo, client, setup)
    return demo


def _wire(
    demo: gr.Blocks,
    client: AttentionClient,
    ins: dict[str, Any],
    outs: dict[str, Any],
    cmp: dict[str, Any],
    status: Any,
    state: Any,
    banner: Any,
) -> None:
    """The model list on load, then the Explore tab's events, then the Compare tab's; the
    untrained-model banner follows the Explore tab's model."""

    def models() -> tuple[Any, Any, Any, str]:
        return model_handlers.list_models(client)

    def first_model_controls(model: str | None) -> tuple[Any, Any, Any]:
        return model_handlers.model_controls(client, model)

    def model_banner(model: str | None) -> Any:
        return model_handlers.banner(client, model)

    # the dropdowns' own listeners fire on a user's choice only (``input``), so the first model's
    # controls are set once, right after the list, and never over a size the user set later
    demo.load(
        models, outputs=[ins["model"], cmp["model_a"], cmp["model_b"], status], api_name="models"
    ).then(
        first_model_controls,
        [ins["model"]],
        [ins["image_size"], ins["layer"], outs["heads_pick"]],
        api_visibility="private",
    ).then(model_banner, [ins["model"]], [banner], api_visibility="private")
    ins["model"].input(model_banner, [ins["model"]], [banner], api_visibility="private")
    wire_explore(client, ins, outs, status, state)
    wire_compare(client, ins, cmp)


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    prevent_thread_lock: bool = False,
    **kwargs: Any,
) -> Any:
    """Start the page on ``host:port`` with the app's styling; no share link.

    Telemetry is off through ``gr.Blocks(analytics_enabled=False)`` in :func:`build_demo`.
    """
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
