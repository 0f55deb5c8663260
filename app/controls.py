"""Input controls that the Explore and Video tabs both show, each under its own element id."""

from __future__ import annotations

from typing import Any

import gradio as gr


def model_dropdown(elem_id: str) -> Any:
    """The model picker; its choices arrive from the service's catalogue when the page loads."""
    return gr.Dropdown(label="Model", choices=[], allow_custom_value=True, elem_id=elem_id)


def image_size_slider(elem_id: str) -> Any:
    """The short side, in pixels, that an image or frame is resized to."""
    return gr.Slider(
        8, 1024, value=480, step=8, label="Image size (short side, px)", elem_id=elem_id
    )


def threshold_slider(elem_id: str) -> Any:
    """The share of attention mass that the masks keep."""
    return gr.Slider(
        0.05,
        1.0,
        value=0.6,
        step=0.05,
        label="Threshold (attention mass kept)",
        elem_id=elem_id,
    )
