"""What a checkpoint file holds (:class:`BackboneInfo`) and the error for unusable files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.model.dinov2 import Dinov2Arch
from trainer.model.dinov3 import Dinov3Arch
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD


class CheckpointError(ValueError):
    """A file that is not a usable DINO / ViT checkpoint; the message says why."""


@dataclass
class BackboneInfo:
    """What a checkpoint file holds, as far as the service and tools need to know."""

    arch: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    layout: str  # the file layout found: authors, timm, transformers, training-teacher, ...
    epoch: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    trained: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    dinov2: Dinov2Arch | None = None  # set for DINOv2 weights
    dinov3: Dinov3Arch | None = None  # set for DINOv3 ViT weights

    @property
    def family(self) -> str:
        """``dino``, ``dinov2`` or ``dinov3``."""
        if self.dinov3 is not None:
            return "dinov3"
        return "dino" if self.dinov2 is None else "dinov2"

    @property
    def registers(self) -> int:
        """Register (DINOv3: storage) tokens between CLS and the patches (0 for DINO)."""
        if self.dinov3 is not None:
            return self.dinov3.storage
        return 0 if self.dinov2 is None else self.dinov2.registers

    @property
    def params(self) -> int | None:
        """Backbone parameter count from the tensor shapes (known for DINOv3 weights)."""
        return None if self.dinov3 is None else self.dinov3.params


# -- writing ---------------------------------------------------------------------------
