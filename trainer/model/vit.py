"""The one Vision Transformer module shared by training, evaluation and the service.

Built on timm's ``VisionTransformer`` so that the state-dict keys are exactly those of
the official DINO weights (``cls_token, pos_embed, patch_embed.proj.*,
blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*, norm.*``).

Two behaviours differ from plain timm and follow the DINO authors' code instead:

* the positional embeddings are sized for a 224 px input (as in the official DINO
  checkpoints; 518 px for DINOv2, :mod:`trainer.model.dinov2`) and are resized to any other
  input with the authors' bicubic interpolation, whose scale factor is ``(n + 0.1) / sqrt(N)``
  (DINOv2 with registers: an explicit size with antialiasing, as its authors do);
* :meth:`DinoViT.get_last_selfattention` / :meth:`DinoViT.get_cls_attention` compute
  explicit attention weights only in the last block; every other block runs timm's fused
  scaled-dot-product attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

PRETRAIN_IMG_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    """Width, depth and heads of one ViT size."""

    embed_dim: int
    depth: int
    num_heads: int


ARCHS: dict[str, ArchSpec] = {
    "vit_tiny": ArchSpec(192, 12, 3),
    "vit_small": ArchSpec(384, 12, 6),
    "vit_base": ArchSpec(768, 12, 12),
}


def arch_spec(arch: str) -> ArchSpec:
    """Look up an architecture by name, with an error that lists the valid names."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def arch_from_dims(embed_dim: int) -> str | None:
    """The named arch whose width is ``embed_dim``, or None for a custom width."""
    for name, spec in ARCHS.items():
        if spec.embed_dim == embed_dim:
            return name
    return None


def interpolate_pos_encoding(
    pos_embed: torch.Tensor,
    grid_h: int,
    grid_w: int,
    num_prefix: int = 1,
    offset: float = 0.1,
    antialias: bool = False,
) -> torch.Tensor:
    """Resize a ``(1, num_prefix + N, D)`` positional embedding to a ``grid_h x grid_w`` patch grid.

    The authors' arithmetic (DINO, and DINOv2's ``interpolate_pos_encoding``): bicubic in float32,
    the ``num_prefix`` leading entries (CLS) kept as they are. With ``offset`` > 0 the scale factor
    is ``(n + offset) / sqrt(N)`` per axis (DINO and the original DINOv2 models: offset 0.1, no
    antialiasing); with ``offset`` 0 the output size is given instead (DINOv2 with registers:
    offset 0, ``antialias=True``).
    """
    num_patches = pos_embed.shape[1] - num_prefix
    side = int(math.sqrt(num_patches))
    if num_patches == grid_h * grid_w and grid_h == grid_w == side:
        return pos_embed
    prefix_pos = pos_embed[:, :num_prefix]
    patch_pos = pos_embed[:, num_prefix:]
    dim = pos_embed.shape[-1]
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        scale = (
            (grid_h + offset) / math.sqrt(num_patches),
            (grid_w + offset) / math.sqrt(num_patches),
        )
        grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        grid = F.interpolate(
            grid.float(), size=(grid_h, grid_w), mode="bicubic", antialias=antialias
        )
    grid = grid.to(pos_embed.dtype)
    if grid.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(
            f"pos-embed interpolation gave {tuple(grid.shape[-2:])}, wanted {(grid_h, grid_w)}"
        )
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([prefix_pos, patch_pos], dim=1)


class DinoViT(VisionTransformer):
    """timm ViT with DINO's positional interpolation and last-block attention read-out."""

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        drop_path_rate: float = 0.0,
        img_size: int = PRETRAIN_IMG_SIZE,
        *,
        reg_tokens: int = 0,
        init_values: float | None = None,
        mlp_ratio: float = 4.0,
        glu_mlp: bool = False,
        interp_offset: float = 0.1,
        interp_antialias: bool = False,
    ) -> None:
        """The defaults are DINO's ViT. DINOv2 (see :mod:`trainer.model.dinov2`) adds LayerScale
        (``init_values``), ``reg_tokens`` registers (whose pos-embed holds patches only, as in
        timm), a SwiGLU MLP for giant (``glu_mlp``) and its own interpolation settings."""
        mlp_kwargs = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU} if glu_mlp else {}
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            init_values=init_values,
            reg_tokens=reg_tokens,
            no_embed_class=reg_tokens > 0,
            **mlp_kwargs,
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        self.patch_size = patch_size
        self.interp_offset = interp_offset
        self.interp_antialias = interp_antialias
        self.set_fused_attention(True)

    # -- configuration -----------------------------------------------------------------
    def set_fused_attention(self, fused: bool) -> None:
        """Use fused SDPA (True) or timm's explicit softmax(QK^T) path (False) in every block."""
        for blk in self.blocks:
            blk.attn.fused_attn = fused

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    # -- forward -----------------------------------------------------------------------
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid for an input of ``height x width`` pixels (partial patches dropped)."""
        return height // self.patch_size, width // self.patch_size

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify (partial edge patches dropped), prepend CLS (and registers), add pos embeddings.

        Token order: CLS, the ``num_reg_tokens`` registers, then the patches row by row. Registers
        get no positional embedding (the DINOv2 authors insert them after adding it).
        """
        gh, gw = self.grid_size(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x[..., : gh * self.patch_size, : gw * self.patch_size])  # B, gh, gw, D
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        cls = self.cls_token.expand(b, -1, -1).to(x.dtype)
        if self.reg_token is None:
            x = torch.cat([cls, x], dim=1)
            x = x + self.interpolate_pos_embed(gh, gw).to(x.dtype)
        else:
            x = x + self.interpolate_pos_embed(gh, gw).to(x.dtype)
            x = torch.cat([cls, self.reg_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        return self.norm_pre(self.pos_drop(x))

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """This model's pos embed resized to ``grid_h x grid_w`` with its interpolation settings."""
        return interpolate_pos_encoding(
            self.pos_embed,
            grid_h,
            grid_w,
            0 if self.no_embed_class else 1,
            self.interp_offset,
            self.interp_antialias,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.prepare_tokens(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """CLS embedding after the final norm, shape ``(B, D)`` (DINO's backbone output)."""
        return self.forward_features(x)[:, 0]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normalised token outputs of the last ``n`` blocks (as in the authors' ViT)."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out

    # -- attention read-out ------------------------------------------------------------
    def _last_block_input(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1].norm1(x)

    def _last_block_qk(self, h: torch.Tensor, cls_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.blocks[-1].attn
        b, n, d = h.shape
        w = attn.qkv.weight
        bias = attn.qkv.bias
        q_in = h[:, :1] if cls_only else h
        q = F.linear(q_in, w[:d], None if bias is None else bias[:d])
        k = F.linear(h, w[d : 2 * d], None if bias is None else bias[d : 2 * d])
        heads = attn.num_heads
        q = attn.q_norm(q.reshape(b, -1, heads, d // heads).transpose(1, 2))
        k = attn.k_norm(k.reshape(b, n, heads, d // heads).transpose(1, 2))
        return q, k

    def get_last_selfattention(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Softmax attention weights of the last block, ``(B, heads, Q, 1 + N)``.

        ``Q`` is ``1 + N`` (every query, like the authors' method) or 1 with ``cls_only``.
        Only the last block's weights are materialised; only its Q/K projections run.
        """
        h = self._last_block_input(x)
        q, k = self._last_block_qk(h, cls_only)
        scale = self.blocks[-1].attn.scale
        return torch.softmax((q.float() * scale) @ k.float().transpose(-2, -1), dim=-1)

    def get_cls_attention(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Block ``layer``'s (default: the last) CLS-to-patch attention per head,
        ``(B, heads, gh, gw)``.

        Blocks before ``layer`` run fused SDPA; blocks after it are not computed.
        """
        from trainer.model.block_attention import block_attention

        gh, gw = self.grid_size(x.shape[-2], x.shape[-1])
        if layer in (-1, len(self.blocks) - 1):
            attn = self.get_last_selfattention(x, cls_only=True)  # B, H, 1, prefix+N
        else:
            attn = block_attention(self, x, layer, (0,)).attention
        return attn[:, :, 0, self.num_prefix_tokens :].reshape(x.shape[0], -1, gh, gw)


def build_vit(
    arch: str = "vit_small",
    patch_size: int = 16,
    drop_path_rate: float = 0.0,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
) -> DinoViT:
    """Build a DINO backbone by name, or with explicit dims (for inferred checkpoints)."""
    if patch_size < 1 or patch_size > PRETRAIN_IMG_SIZE:
        raise ValueError(f"patch_size must be between 1 and {PRETRAIN_IMG_SIZE}, got {patch_size}")
    if embed_dim is None:
        spec = arch_spec(arch)
        embed_dim = spec.embed_dim
        depth = spec.depth
        num_heads = spec.num_heads
    assert depth is not None and num_heads is not None
    return DinoViT(
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=drop_path_rate,
    )
