"""Gradio components whose API checks are the service's, so a program sees one set of rules.

* :class:`ServiceSlider`: a slider whose value reaches the service as given (a block or size
  out of range gets the service's own message, which names the allowed range);
* :class:`HeadBoxes`: the composite's head boxes; heads the current model lacks are left out
  instead of refusing the call (the default list then fits every model);
* :class:`ImageUpload`: an image upload that turns a file that is not an image into a readable
  message naming the formats allowed, without a traceback in the log.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.components.slider import Number

from app.handlers import ERROR_TOAST_S

IMAGE_FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"


class ServiceSlider(gr.Slider):
    """A :class:`gradio.Slider` whose programmatic values are not clamped to its range."""

    is_template = True  # drawn by the browser as a plain slider

    def preprocess(self, payload: float) -> float:
        return Number.round_to_precision(payload, self.precision)


class HeadBoxes(gr.CheckboxGroup):
    """The composite's head boxes: ticked heads the model lacks are dropped, not refused."""

    is_template = True

    def preprocess(self, payload: list[Any] | None) -> list[Any]:
        known = {value for _, value in self.choices}
        kept = []
        for value in payload or []:
            try:
                head = int(value)
            except (TypeError, ValueError):
                raise gr.Error(
                    f"heads must be head numbers (ints), got {value!r}",
                    duration=ERROR_TOAST_S,
                    print_exception=False,
                ) from None
            if head in known:
                kept.append(head)
        return kept


class ImageUpload(gr.Image):
    """:class:`gradio.Image` whose unreadable uploads are a readable ``gr.Error``."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one readable message
            name = getattr(payload, "orig_name", None) or getattr(payload, "path", "the file")
            label = self.label or "image"
            raise gr.Error(
                f"{label}: {name!s} is not an image the app can read ({type(exc).__name__}); "
                f"upload a {IMAGE_FORMATS} file.",
                title="Not an image",
                duration=ERROR_TOAST_S,
                print_exception=False,
            ) from None
