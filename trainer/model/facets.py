"""Dense patch descriptors of one block: its key, query or value, or its output token.

Amir et al. (2021), "Deep ViT Features as Dense Visual Descriptors", use the facets of a
block's attention as descriptors. ``block_facet(model, x, layer, facet)`` runs the blocks
before ``layer`` with the model's own forward, then computes the ``qkv`` projection of block
``layer`` on its normalised input (``norm1``). The heads are concatenated (``(B, N, D)``) and the
prefix tokens (CLS, registers) are dropped, so the ``N`` rows are the patches in row-major
order. ``token`` is block ``layer``'s output (after the final norm when it is the last block).
No hooks are used, so any block of any :class:`~trainer.model.vit.DinoViT`-like model works;
a DINOv3 ``Eva`` is read through :class:`~trainer.model.eva_backbone.EvaBackbone`, whose key,
query and value facets are the projections before the rotary embedding (RoPE encodes where a
patch is, not what it shows, and rotated keys of two images would not be comparable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.model.block_attention import prefix_tokens, resolve_layer
from trainer.model.eva_backbone import as_backbone

FACETS = ("key", "query", "value", "token")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


def check_facet(facet: str) -> str:
    """``facet`` if it is one of :data:`FACETS`, else ValueError listing them."""
    if facet not in FACETS:
        raise ValueError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}")
    return facet


def qkv_part(attn: nn.Module, h: torch.Tensor, facet: str) -> torch.Tensor:
    """One of q, k, v of a timm ``Attention`` on ``h`` ``(B, T, D)``, heads concatenated.

    The per-head ``q_norm`` / ``k_norm`` (identity in DINO) are applied as in the forward.
    """
    b, n, _ = h.shape
    part = _QKV_INDEX[facet]
    inner = attn.qkv.weight.shape[0] // 3
    rows = slice(part * inner, (part + 1) * inner)
    bias = attn.qkv.bias
    out = F.linear(h, attn.qkv.weight[rows], None if bias is None else bias[rows])
    norm = {"query": getattr(attn, "q_norm", None), "key": getattr(attn, "k_norm", None)}
    layer_norm = norm.get(facet)
    if layer_norm is not None and not isinstance(layer_norm, nn.Identity):
        heads = attn.num_heads
        out = layer_norm(out.reshape(b, n, heads, inner // heads)).reshape(b, n, inner)
    return out


def block_facet(
    model: nn.Module, x: torch.Tensor, layer: int = -1, facet: str = "key"
) -> torch.Tensor:
    """Patch descriptors ``(B, gh*gw, D)`` of ``facet`` in block ``layer`` for images ``x``.

    ``x`` is a normalised batch ``(B, 3, H, W)``; blocks after ``layer`` are not run.
    """
    check_facet(facet)
    model = as_backbone(model)
    blocks = model.blocks
    index = resolve_layer(len(blocks), layer)
    tokens = model.prepare_tokens(x)
    for blk in blocks[:index]:
        tokens = blk(tokens)
    block = blocks[index]
    if facet == "token":
        out = block(tokens)
        if index == len(blocks) - 1:
            out = model.norm(out)
    else:
        out = qkv_part(block.attn, block.norm1(tokens), facet)
    return out[:, prefix_tokens(model) :]
