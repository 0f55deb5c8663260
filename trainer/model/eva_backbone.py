"""A DINOv3 backbone (timm ``Eva`` with RoPE) with the methods of a DINO ViT.

The evaluations, the facets of matching and object discovery, and every other per-block
read-out are written against :class:`~trainer.model.vit.DinoViT`. DINOv3 ViTs are timm ``Eva``
models with RoPE; :class:`EvaBackbone` gives them the same methods:

* ``forward(x)``: the CLS token after the final norm, ``(B, D)``;
* ``get_intermediate_layers(x, n)``: the normalised token outputs of the last ``n`` blocks;
* ``get_cls_attention(x, layer)``: a block's CLS-to-patch attention per head,
  ``(B, heads, gh, gw)``, and ``get_last_selfattention(x)``: every row of the last block;
* ``prepare_tokens`` / ``blocks`` / ``norm`` in the DINO layout, for per-block read-outs;
* ``patch_size``, ``num_prefix_tokens`` (CLS plus the 4 storage tokens), ``grid_size``.

:func:`as_backbone` wraps an ``Eva`` and leaves every other model as it is. A wrapper holds the
RoPE of its current input, so make one per call (it is cheap: it shares the weights).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.model.block_attention import block_attention, is_eva


class _QKV:
    """An Eva ``qkv`` as timm's ``Attention`` has it: the fused weight and the fused bias."""

    def __init__(self, attn: nn.Module) -> None:
        self.weight = attn.qkv.weight
        parts = (attn.q_bias, attn.k_bias, attn.v_bias)
        self.bias = None if attn.q_bias is None else torch.cat(parts)


class _AttnView:
    def __init__(self, attn: nn.Module) -> None:
        self.qkv, self.num_heads = _QKV(attn), attn.num_heads
        self.q_norm, self.k_norm, self.scale = attn.q_norm, attn.k_norm, attn.scale


class _BlockView:
    """An Eva block called as a DINO block: ``block(tokens)`` with the RoPE of the current
    input (set by :meth:`EvaBackbone.prepare_tokens`); ``attn`` and ``norm1`` as in timm."""

    def __init__(self, block: nn.Module, owner: EvaBackbone) -> None:
        self.block, self.owner = block, owner
        self.attn, self.norm1 = _AttnView(block.attn), block.norm1

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.block(tokens, rope=self.owner._rope)


class EvaBackbone(nn.Module):
    """A DINOv3 (timm ``Eva``) backbone with the evaluation methods of :class:`DinoViT`.

    ``prepare_tokens`` / ``blocks`` / ``norm`` follow the DINO layout too, for the per-block
    read-outs (facets of LOST and TokenCut): the blocks run with the input's RoPE, and a key,
    query or value facet is the projection before the rotation (RoPE encodes position only).
    """

    def __init__(self, eva: nn.Module) -> None:
        super().__init__()
        self.model = eva
        self.patch_size = int(eva.patch_size)
        self.num_prefix_tokens = int(eva.num_prefix_tokens)
        self._rope: torch.Tensor | None = None

    @property
    def blocks(self) -> list[_BlockView]:
        return [_BlockView(b, self) for b in self.model.blocks]

    @property
    def norm(self) -> nn.Module:
        return self.model.norm

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """CLS, storage and patch tokens of ``x`` before the first block (its RoPE kept)."""
        tokens, self._rope = self.model._pos_embed(self.model.patch_embed(self._crop(x)))
        return self.model.norm_pre(tokens)

    @property
    def num_heads(self) -> int:
        return self.model.blocks[0].attn.num_heads

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid for an input of ``height x width`` pixels (partial patches dropped)."""
        return height // self.patch_size, width // self.patch_size

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid_size(x.shape[-2], x.shape[-1])
        return x[..., : gh * self.patch_size, : gw * self.patch_size]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normalised token outputs of the last ``n`` blocks (timm's Eva forward, per block)."""
        m = self.model
        tokens, rope = m._pos_embed(m.patch_embed(self._crop(x)))
        tokens = m.norm_pre(tokens)
        out = []
        for i, blk in enumerate(m.blocks):
            tokens = blk(tokens, rope=rope)
            if len(m.blocks) - i <= n:
                out.append(m.norm(tokens))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS embedding after the final norm, ``(B, D)``."""
        return self.get_intermediate_layers(x, 1)[0][:, 0]

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention of the last block for every query, ``(B, heads, T, T)``."""
        return block_attention(self.model, self._crop(x), -1, None).attention

    def get_cls_attention(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Block ``layer``'s CLS-to-patch attention per head, ``(B, heads, gh, gw)``."""
        gh, gw = self.grid_size(x.shape[-2], x.shape[-1])
        attn = block_attention(self.model, self._crop(x), layer, (0,)).attention
        return attn[:, :, 0, self.num_prefix_tokens :].reshape(x.shape[0], -1, gh, gw)


def as_backbone(model: nn.Module) -> nn.Module:
    """``model`` itself for a DINO / DINOv2 ViT, an :class:`EvaBackbone` around a DINOv3 one."""
    if isinstance(model, EvaBackbone) or not is_eva(model):
        return model
    return EvaBackbone(model)
