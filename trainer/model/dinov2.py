"""DINOv2 backbones (Oquab et al. 2023), with and without registers (Darcet et al. 2023).

A DINOv2 model is a :class:`~trainer.model.vit.DinoViT` with patch 14, LayerScale, a 518 px
(37 x 37) positional grid and 0 or 4 register tokens; the giant size uses a SwiGLU MLP.
Its weights are held in timm's layout (``reg_token``; for register models a pos-embed without
the CLS entry, which is folded into ``cls_token``). The authors' hub checkpoints
(``register_tokens``, ``mask_token``, ``mlp.w12``/``mlp.w3``) are converted with timm's own
``checkpoint_filter_fn``; transformers files are first renamed to the authors' keys
(:mod:`trainer.model.hf_dinov2`).

Positional embeddings are interpolated with the authors' per-variant settings
(``dinov2/hub/backbones.py``): bicubic with offset 0.1 and no antialiasing for the original
models, bicubic to an explicit size (offset 0) with antialiasing for the register models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from trainer.model.vit import DinoViT

DINOV2_PATCH = 14
DINOV2_IMG_SIZE = 518  # the authors' pretraining resolution (37 x 37 patches)
SIZE_NAMES = {384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant2"}
SUPPORTED = (
    "DINOv2 ViT-S/B/L/g with patch 14, LayerScale and 0 or 4 registers (MLP or, for "
    "giant, SwiGLU FFN) in the authors', timm's or transformers' key layout"
)


@dataclass(frozen=True)
class Dinov2Arch:
    """Everything needed to build a DINOv2 backbone, as read from its weights."""

    embed_dim: int
    depth: int
    num_heads: int
    registers: int
    mlp_hidden: int  # width of fc1's output (twice the SwiGLU hidden width when ``glu``)
    glu: bool
    pos_grid: int  # side of the stored positional grid (37 for the released models)
    patch_size: int = DINOV2_PATCH

    @property
    def name(self) -> str:
        """``vit_small`` / ``vit_base`` / ``vit_large`` / ``vit_giant2``, or ``vit_d<dim>``."""
        return SIZE_NAMES.get(self.embed_dim, f"vit_d{self.embed_dim}")


def interpolation_settings(registers: int) -> tuple[float, bool]:
    """(offset, antialias) of the authors' ``interpolate_pos_encoding`` for this variant."""
    return (0.0, True) if registers else (0.1, False)


def build_dinov2(arch: Dinov2Arch) -> DinoViT:
    """A randomly initialised DINOv2 backbone of ``arch`` (load weights into it)."""
    offset, antialias = interpolation_settings(arch.registers)
    # +0.5: timm sizes the MLP as int(dim * ratio); keep that exactly ``mlp_hidden``
    ratio = (arch.mlp_hidden + 0.5) / arch.embed_dim
    return DinoViT(
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        img_size=arch.pos_grid * arch.patch_size,
        reg_tokens=arch.registers,
        init_values=1.0,
        mlp_ratio=ratio,
        glu_mlp=arch.glu,
        interp_offset=offset,
        interp_antialias=antialias,
    )


def is_authors_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the DINOv2 authors' keys (which timm must convert)."""
    return (
        "mask_token" in state
        or "register_tokens" in state
        or any(k.endswith((".mlp.w12.weight", ".mlp.w3.weight")) for k in state)
    )


def is_dinov2_state(state: dict[str, torch.Tensor]) -> bool:
    """DINOv2 in any layout: LayerScale or registers (DINO's ViTs have neither)."""
    return "blocks.0.ls1.gamma" in state or "reg_token" in state or is_authors_layout(state)


def _mlp_shape(state: dict[str, torch.Tensor]) -> tuple[int, bool]:
    if "blocks.0.mlp.w12.weight" in state:  # the authors' SwiGLU FFN (giant)
        return int(state["blocks.0.mlp.w12.weight"].shape[0]), True
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    fc2 = state.get("blocks.0.mlp.fc2.weight")
    if fc1 is None or fc2 is None:
        raise ValueError(
            f"no MLP weights in block 0 (blocks.0.mlp.fc1/fc2 or w12/w3); supported: {SUPPORTED}"
        )
    return int(fc1.shape[0]), int(fc1.shape[0]) == 2 * int(fc2.shape[1])


def infer_dinov2_arch(state: dict[str, torch.Tensor]) -> Dinov2Arch:
    """The architecture of a DINOv2 state dict in the authors' or timm's layout."""
    proj = state["patch_embed.proj.weight"]
    dim = int(proj.shape[0])
    patch = int(proj.shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    reg = state.get("register_tokens", state.get("reg_token"))
    registers = 0 if reg is None else int(reg.shape[1])
    # the authors' pos-embed always has a CLS entry; timm's has none for register models
    prefix = 0 if "reg_token" in state else 1
    patches = int(state["pos_embed"].shape[1]) - prefix
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(
            f"pos_embed holds {patches} patch positions, not a square grid; supported: {SUPPORTED}"
        )
    if dim % 64:
        raise ValueError(
            f"embed dim {dim} is not a multiple of the 64-wide heads; supported: {SUPPORTED}"
        )
    hidden, glu = _mlp_shape(state)
    return Dinov2Arch(dim, depth, dim // 64, registers, hidden, glu, side, patch)


def to_timm_layout(state: dict[str, torch.Tensor], arch: Dinov2Arch) -> dict[str, torch.Tensor]:
    """The authors' keys converted by timm's ``checkpoint_filter_fn``; timm's keys unchanged.

    The model timm needs for the conversion is built on the meta device (no memory, no init).
    """
    if not is_authors_layout(state):
        return state
    with torch.device("meta"):
        target = build_dinov2(arch)
    return checkpoint_filter_fn(dict(state), target)
