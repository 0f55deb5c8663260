"""The model list and the controls that follow the chosen model: the dropdown labels, the status
line, the image-size slider, the Block slider and the composite's head boxes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app import model_info, rendering
from app.client import BackendError
from app.handlers import ERROR_TOAST_S, AttentionClient, readable_errors

LABEL_SUMMARY_CHARS = 80  # the model card summary is cut to this length in the dropdown
LABEL_REASON_CHARS = 60  # and why a model cannot be served (the full reason: GET /models)


def _catalog_entry(
    client: AttentionClient, model_id: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    catalog = readable_errors("list the models", client.models)
    return next((m for m in catalog["models"] if m.get("id") == model_id), None), catalog


def model_label(entry: dict[str, Any]) -> str:
    """Short dropdown text of one /models entry: id, architecture, trained or random weights, a
    short model card, and the status when the weights are not here (the reason in full is in
    the status line when the model is picked)."""
    trained = entry.get("trained", True)
    kind = "trained" if trained else "random weights"
    label = f"{entry['id']} ({entry.get('arch', '?')}/{entry.get('patch_size', '?')}, {kind})"
    card = rendering.card_text(entry.get("summary"), LABEL_SUMMARY_CHARS) if trained else ""
    if card:
        label += f": {card}"
    if entry.get("available") is False:
        label += f" - {entry.get('status') or 'unavailable'}"
        reason = rendering.card_text(entry.get("error"), LABEL_REASON_CHARS)
        label += f": {reason}" if reason else ""
    return label


def catalog_text(catalog: dict[str, Any], base_url: str) -> str:
    """The status line once the models are listed: how many, and the default's weights."""
    default = next((m for m in catalog["models"] if m.get("id") == catalog.get("default")), None)
    link = f"[{base_url}]({base_url}/docs)"  # the service's interactive API documentation
    if default is None:
        return f"Connected to {link}: {len(catalog['models'])} models, no default model."
    return (
        f"Connected to {link}: {len(catalog['models'])} model(s). Default **{default['id']}**: "
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
            duration=ERROR_TOAST_S,
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
    entry, catalog = _entry(client, model_id)
    return (_size_slider(entry, catalog), *_block_and_heads(entry))


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


def _entry(
    client: AttentionClient, model_id: str | None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    return _catalog_entry(client, model_id) if model_id else (None, {})


def _size_slider(entry: dict[str, Any] | None, catalog: dict[str, Any]) -> Any:
    if entry is None:
        return gr.skip()
    value, step, top = model_info.size_settings(entry, model_info.max_image_size(catalog))
    return gr.Slider(minimum=step, maximum=top, step=step, value=value)


def _block_and_heads(entry: dict[str, Any] | None) -> tuple[Any, Any]:
    if entry is None:
        return gr.skip(), gr.skip()
    depth = int(entry.get("depth") or 12)
    heads = int(entry.get("num_heads") or 1)
    choices = [(rendering.head_label(i), i) for i in range(heads)]
    return (
        gr.Slider(minimum=-1, maximum=depth - 1, step=1, value=depth - 1),
        gr.CheckboxGroup(choices=choices, value=list(range(heads))),
    )


def size_control(client: AttentionClient, model_id: str | None) -> Any:
    """The image-size slider for ``model_id``: its default size (DINO 480, DINOv2 518), in patch
    steps."""
    return _size_slider(*_entry(client, model_id))


def explore_controls(client: AttentionClient, model_id: str | None) -> tuple[Any, Any]:
    """The Block slider (0 .. depth-1, at the last block) and the head boxes (all ticked) for
    ``model_id``."""
    return _block_and_heads(_entry(client, model_id)[0])


UNTRAINED_REASON = "random weights: structure here comes from colour, not learning"


def untrained_text(reason: str | None = None) -> str:
    """The words the page uses for an untrained model (the service's ``trained_reason``)."""
    text = reason or UNTRAINED_REASON
    return text[:1].upper() + text[1:]


def banner_update(entry: dict[str, Any] | None) -> Any:
    """The page's banner for the selected model: shown only when its weights are untrained."""
    if not entry or entry.get("trained", True) is not False:
        return gr.Markdown(value="", visible=False)
    return gr.Markdown(
        value=(
            f"⚠ **{untrained_text(entry.get('trained_reason'))}.** `{entry['id']}` has random "
            "weights: its heads group pixels by colour, so the maps show shapes without any "
            "learning. Every picture made with it is marked *random weights*. Pick trained "
            "weights, or put a trained file in `checkpoints/`."
        ),
        visible=True,
    )


def banner(client: AttentionClient, model_id: str | None) -> Any:
    """:func:`banner_update` for ``model_id`` (the default model when empty)."""
    catalog = readable_errors("list the models", client.models)
    wanted = model_id or catalog.get("default")
    return banner_update(next((m for m in catalog["models"] if m.get("id") == wanted), None))


@dataclass(frozen=True)
class PageSetup:
    """What the page is built with, read once from ``GET /models`` (the events refresh it)."""

    choices: list[tuple[str, str]] = field(default_factory=list)
    default: str | None = None
    second: str | None = None
    depth: int = 12
    heads: int = 24  # until a model is known (ViT-g has 24); the boxes narrow when one is picked
    size: tuple[int, int, int] = (480, 8, model_info.UNKNOWN_MAX_IMAGE_SIZE)


def page_setup(client: AttentionClient) -> PageSetup:
    """The model ids, the default model's shape and the service's size limit; the defaults when
    the service cannot be reached (the page then says why when it loads)."""
    try:
        catalog = client.models()
    except BackendError:
        return PageSetup()
    entries = [m for m in catalog.get("models", []) if isinstance(m, dict) and "id" in m]
    if not entries:
        return PageSetup(size=PageSetup().size[:2] + (model_info.max_image_size(catalog),))
    default = default_model_id(catalog)
    entry = next(m for m in entries if m["id"] == default)
    return PageSetup(
        choices=[(model_label(m), m["id"]) for m in entries],
        default=default,
        second=second_model(catalog, default) if default else None,
        depth=int(entry.get("depth") or 12),
        heads=int(entry.get("num_heads") or 24),
        size=model_info.size_settings(entry, model_info.max_image_size(catalog)),
    )
