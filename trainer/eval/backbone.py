"""One loader and one interface for the frozen backbones of the evaluations: DINO, DINOv2, DINOv3.

Every file the service reads (:func:`trainer.model.checkpoint.load_backbone`) loads here too.
DINO and DINOv2 (with or without registers) are :class:`~trainer.model.vit.DinoViT` models and
are used as they are, so their results are unchanged. DINOv3 ViTs (timm ``Eva`` with RoPE)
are wrapped in :class:`~trainer.model.eva_backbone.EvaBackbone`, which gives them the same
methods.

:func:`patch_tokens` reads the last block's patch tokens after the norm with the prefix tokens
(CLS, registers, storage tokens) excluded, so every patch map has ``gh * gw`` rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainer.model.backbone_info import BackboneInfo
from trainer.model.eva_backbone import EvaBackbone, as_backbone

__all__ = ["EvaBackbone", "as_backbone", "cls_and_patches", "load_eval_backbone", "patch_tokens"]

logger = logging.getLogger(__name__)


def load_eval_backbone(path: str | Path, which: str = "teacher") -> tuple[nn.Module, BackboneInfo]:
    """Any file the service loads (DINO, DINOv2, DINOv3), as an evaluation backbone in eval mode."""
    from trainer.model.checkpoint import load_backbone

    model, info = load_backbone(path, which)
    logger.info("loaded %s %s/%d (%s layout)", info.family, info.arch, info.patch_size, info.layout)
    return as_backbone(model).eval(), info


def prefix_count(model: nn.Module) -> int:
    """Tokens before the patches: 1 (CLS) plus any registers / storage tokens."""
    return int(getattr(model, "num_prefix_tokens", 1))


def patch_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's patch tokens after the final norm, ``(B, gh * gw, D)``, prefix excluded."""
    return model.get_intermediate_layers(x, 1)[0][:, prefix_count(model) :]


def cls_and_patches(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CLS (B, D), patch tokens (B, gh * gw, D))`` of the last block after the norm, one pass."""
    tokens = model.get_intermediate_layers(x, 1)[0]
    return tokens[:, 0], tokens[:, prefix_count(model) :]
