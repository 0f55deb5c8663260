"""The Explore tab's Objects panel: ``POST /objects`` on the tab's image (api name ``objects``)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import handlers, rendering
from app.handlers import ERROR_TOAST_S, AttentionClient
from app.model_handlers import untrained_text


def find_objects(
    client: AttentionClient,
    image: str | None,
    model: str | None,
    image_size: float,
    gt_mask: str | None,
    method: str,
) -> tuple[Any, str]:
    """(the picture with the box and seed, a status line with the box and its IoU)."""
    if not image:
        raise gr.Error(
            "Upload an image first.",
            title="Nothing to look at",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )
    reply = handlers.readable_errors(
        "find the main object",
        lambda: client.objects(
            image, model or None, int(image_size), gt_mask or None, method=method
        ),
    )
    return rendering.model_picture(reply, reply["overlay"]), objects_status(reply)


def objects_status(reply: dict[str, Any]) -> str:
    box = ", ".join(f"{v:.0f}" for v in reply["boxes"][0])
    line = (
        f"{reply['method'].upper()} on {reply['model']}: box [{box}] px of the upload, "
        f"seed patch {reply['seed']} of a {reply['grid'][0]}x{reply['grid'][1]} grid (rows x cols)."
    )
    if reply.get("box_iou") is not None:
        line += f" Box IoU with the mask's box: {reply['box_iou']:.3f}."
    if rendering.untrained(reply):
        line += f" **{untrained_text(reply.get('trained_reason'))}.**"
    return line


def wire_objects(client: AttentionClient, ins: dict[str, Any], outs: dict[str, Any]) -> None:
    """``objects``: the Find the object button."""

    def run(
        image: str | None,
        model: str | None,
        image_size: float,
        gt_mask: str | None = None,
        method: str = "lost",
    ) -> tuple[Any, str]:
        return find_objects(client, image, model, image_size, gt_mask, method)

    event = outs["objects_run"].click(
        run,
        [ins["image"], ins["model"], ins["image_size"], ins["gt_mask"], outs["objects_method"]],
        [outs["objects_picture"], outs["objects_status"]],
        api_name="objects",
        show_progress_on=[outs["objects_status"]],
    )
    handlers.keep_on_failure(event, outs["objects_status"])
