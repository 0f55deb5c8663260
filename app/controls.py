"""Input controls that the Explore and Video tabs both show, each under its own element id.

They are built with what the service said when the page was made (:class:`PageSetup`): the
model ids, the default model's size settings and the service's largest image size, so that a
program reading ``view_api()`` sees the real choices and limits.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.components import ServiceSlider
from app.model_handlers import PageSetup


def model_dropdown(
    elem_id: str, setup: PageSetup, label: str = "Model", value: str | None = None
) -> Any:
    """The model picker, with the service's ids (the list is refreshed when the page loads);
    it starts at ``value``, else the service's default."""
    return gr.Dropdown(
        label=label,
        choices=setup.choices,
        value=value or setup.default,
        allow_custom_value=True,
        elem_id=elem_id,
        elem_classes=["model-pick"],
    )


def image_size_slider(elem_id: str, setup: PageSetup) -> Any:
    """The short side, in pixels, that an image or frame is resized to: the default model's
    size, in its patch steps, up to the service's limit (the service checks the value)."""
    value, step, top = setup.size
    return ServiceSlider(
        step, top, value=value, step=step, label="Image size (short side, px)", elem_id=elem_id
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
