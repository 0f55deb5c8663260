"""A random-init ViT-S/16 so the service always starts, even offline with no checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit

log = logging.getLogger(__name__)
PLACEHOLDER_ID = "placeholder_vits16"
PLACEHOLDER_FILE = f"{PLACEHOLDER_ID}.safetensors"
PLACEHOLDER_SUMMARY = (
    "Random-init placeholder (ViT-S/16), untrained: random weights, so the structure in its maps "
    "comes from colour, not learning"
)


def placeholder_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / PLACEHOLDER_FILE


def ensure_placeholder(cache_dir: Path) -> Path:
    """Create (once, atomically) the placeholder safetensors with metadata ``trained=false``."""
    path = placeholder_path(cache_dir)
    if path.exists():
        return path
    log.warning("no trained model available: creating a random-init placeholder at %s", path)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = build_vit("vit_small", 16)
    finally:
        torch.random.set_rng_state(generator_state)
    export_backbone_safetensors(
        model,
        path,
        arch="vit_small",
        epoch=None,
        trained=False,
        extra={"note": "random-init placeholder, not trained", "summary": PLACEHOLDER_SUMMARY},
    )
    return path
