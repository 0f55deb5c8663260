"""The model list and the controls that follow the chosen model: the dropdown labels, the status
line, the image-size slider, the Block slider and the composite's head boxes."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import model_info, rendering
from app.handlers import AttentionClient, readable_errors

LABEL_SUMMARY_CHARS = 80  # the model card summary is cut to this length in the dropdown


def _catalog_entry(client: AttentionClient, model_id: str) -> dict[str, Any] | None:
    catalog = readable_errors("list the models", client.models)
    return next((m for m in catalog["models"] if m.get("id") == model_id), None)


def model_label(entry: dict[str, Any]) -> str:
    """Dropdown text of one /models entry: id, architecture, trained or placeholder, short model
    card."""
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
    """The status line once the models are listed: how many, and the default's weights."""
    default = next((m for m in catalog["models"] if m.get("id") == catalog.get("default")), None)
    if default is None:
        return f"Connected to {base_url}: {len(catalog['models'])} models, no default model."
    return (
        f"Connected to {base_url}: {len(catalog['models'])} model(s). Default **{default['id']}**: "
        f"{rendering.weights_text(default.get('trained'), default.get('summary'))}. "
        "Upload an image or pick an example."
    )


def list_models(client: AttentionClient) -> tuple[Any, Any, Any, str]:
    """Fill the model dropdowns (main, compare A, compare B) from ``GET /models``; and a status
    line."""
    catalog = readable_errors("list the models", client.models)
    ids = [m["id"] for m in catalog["models"] if "id" in m]
    if not ids:
        raise gr.Error(
            f"The service at {client.base_url} offers no models; put a checkpoint in checkpoints/ "
            "or allow downloads (DINO_ALLOW_DOWNLOADS=true).",
            print_exception=False,
        )
    choices = [(model_label(m), m["id"]) for m in catalog["models"] if "id" in m]
    default = default_model_id(catalog)
    return (
        gr.Dropdown(choices=choices, value=default),
        gr.Dropdown(choices=choices, value=default),
        gr.Dropdown(choices=choices, value=second_model(catalog, default)),
        catalog_text(catalog, client.base_url),
    )


def default_model_id(catalog: dict[str, Any]) -> str | None:
    """The model the page starts with: the service's default, else the first one listed."""
    ids = [m["id"] for m in catalog.get("models", []) if "id" in m]
    if not ids:
        return None
    return catalog.get("default") if catalog.get("default") in ids else ids[0]


def model_controls(client: AttentionClient, model_id: str | None) -> tuple[Any, Any, Any]:
    """The size, Block and head controls of ``model_id`` (one catalogue read): what the page sets
    for the first model once the list has loaded."""
    entry = _entry(client, model_id)
    return (_size_slider(entry), *_block_and_heads(entry))


def second_model(catalog: dict[str, Any], default: str) -> str:
    """Model B of the comparison: preferably one usable without a download (loaded, or a local
    file)."""
    others = [
        m
        for m in catalog["models"]
        if m.get("id") and m["id"] != default and m.get("available", True)
    ]
    local = [m for m in others if m.get("loaded") or m.get("source") in ("file", "placeholder")]
    return (local or others or [{"id": default}])[0]["id"]


def _entry(client: AttentionClient, model_id: str | None) -> dict[str, Any] | None:
    return _catalog_entry(client, model_id) if model_id else None


def _size_slider(entry: dict[str, Any] | None) -> Any:
    if entry is None:
        return gr.skip()
    value, step, top = model_info.size_settings(entry)
    return gr.Slider(minimum=step, maximum=top, step=step, value=value)


def _block_and_heads(entry: dict[str, Any] | None) -> tuple[Any, Any]:
    if entry is None:
        return gr.skip(), gr.skip()
    depth = int(entry.get("depth") or 12)
    heads = int(entry.get("num_heads") or 1)
    choices = [(rendering.head_label(i), i) for i in range(heads)]
    return (
        gr.Slider(minimum=0, maximum=depth - 1, step=1, value=depth - 1),
        gr.CheckboxGroup(choices=choices, value=list(range(heads))),
    )


def size_control(client: AttentionClient, model_id: str | None) -> Any:
    """The image-size slider for ``model_id``: its default size (DINO 480, DINOv2 518), in patch
    steps."""
    return _size_slider(_entry(client, model_id))


def explore_controls(client: AttentionClient, model_id: str | None) -> tuple[Any, Any]:
    """The Block slider (0 .. depth-1, at the last block) and the head boxes (all ticked) for
    ``model_id``."""
    return _block_and_heads(_entry(client, model_id))
