"""Attention weights of any block, for any query tokens, and that block's output tokens.

``block_attention(model, x, layer, query_index)`` runs the blocks before ``layer`` with the
model's own (fused SDPA) forward, materialises the softmax rows of block ``layer`` for the
requested query tokens only (``softmax(q k^T / sqrt(d))`` over *all* tokens, prefix tokens
included, as in the DINO authors' ``Attention``), and never computes the blocks after it.
With ``with_tokens`` it also returns block ``layer``'s output tokens (after the final norm
only when ``layer`` is the last block), which is what a feature PCA needs.

DINOv3 (timm ``Eva`` with RoPE) is read out the same way, with the model's rotary embedding
applied to q and k of the patch tokens only (the CLS and storage tokens get none).

Token indices count every token: the prefix tokens first (``model.num_prefix_tokens``: the CLS
token, then any register tokens), then the patches in row-major order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BlockReadout:
    """Softmax rows ``(B, heads, Q, T)`` of one block, optionally its output ``(B, T, D)``."""

    attention: torch.Tensor
    tokens: torch.Tensor | None = None


def resolve_layer(depth: int, layer: int) -> int:
    """``layer`` as a block index ``0 .. depth-1`` (negative counts from the end), or ValueError."""
    if not -depth <= layer < depth:
        raise ValueError(
            f"layer {layer} is out of range for a model with {depth} blocks; "
            f"use 0 to {depth - 1}, or -{depth} to -1 counting from the last block"
        )
    return layer % depth


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens precede the patches (CLS plus registers); 1 for a plain DINO ViT."""
    return int(getattr(model, "num_prefix_tokens", 1))


def query_logits(
    attn: nn.Module, h: torch.Tensor, query_index: Sequence[int] | None
) -> torch.Tensor:
    """Scaled ``q k^T`` of one timm ``Attention`` for the chosen query rows, ``(B, heads, Q, T)``.

    Only the Q projection of the chosen tokens and the K projection of all tokens are computed.
    """
    b, n, _ = h.shape
    heads = attn.num_heads
    inner = attn.qkv.weight.shape[0] // 3
    head_dim = inner // heads
    w = attn.qkv.weight
    bias = attn.qkv.bias
    q_in = h if query_index is None else h[:, list(query_index)]
    q = F.linear(q_in, w[:inner], None if bias is None else bias[:inner])
    k = F.linear(h, w[inner : 2 * inner], None if bias is None else bias[inner : 2 * inner])
    q = attn.q_norm(q.reshape(b, -1, heads, head_dim).transpose(1, 2))
    k = attn.k_norm(k.reshape(b, n, heads, head_dim).transpose(1, 2))
    return (q.float() * attn.scale) @ k.float().transpose(-2, -1)


def _eva_logits(
    attn: nn.Module, h: torch.Tensor, rope: torch.Tensor | None, query_index: Sequence[int] | None
) -> torch.Tensor:
    """Scaled ``q k^T`` of one timm ``EvaAttention`` (fused qkv, masked k bias, RoPE on patches)."""
    from timm.layers import apply_rot_embed_cat

    b, n, _ = h.shape
    heads = attn.num_heads
    inner = attn.qkv.weight.shape[0] // 3
    w = attn.qkv.weight
    q_bias = attn.q_bias
    q = F.linear(h, w[:inner], q_bias).reshape(b, n, heads, -1).transpose(1, 2)
    k = F.linear(h, w[inner : 2 * inner], attn.k_bias).reshape(b, n, heads, -1).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt = attn.num_prefix_tokens
        half = getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2)
    if query_index is not None:
        q = q[:, :, list(query_index)]
    return (q.float() * attn.scale) @ k.float().transpose(-2, -1)


def is_eva(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``Eva`` (the DINOv3 backbones)."""
    return hasattr(model, "rope") and hasattr(model, "_pos_embed")


def _eva_attention(
    model: nn.Module, x: torch.Tensor, index: int, query_index: Sequence[int] | None, with_tokens
) -> BlockReadout:
    tokens, rope = model._pos_embed(model.patch_embed(x))
    tokens = model.norm_pre(tokens)
    for blk in model.blocks[:index]:
        tokens = blk(tokens, rope=rope)
    block = model.blocks[index]
    logits = _eva_logits(block.attn, block.norm1(tokens), rope, query_index)
    out = None
    if with_tokens:
        out = block(tokens, rope=rope)
        if index == len(model.blocks) - 1:
            out = model.norm(out)
    return BlockReadout(torch.softmax(logits, dim=-1), out)


def block_attention(
    model: nn.Module,
    x: torch.Tensor,
    layer: int,
    query_index: Sequence[int] | None = (0,),
    with_tokens: bool = False,
) -> BlockReadout:
    """Block ``layer``'s attention rows for ``query_index`` (None: every token) of images ``x``.

    ``x`` is a normalised image batch ``(B, 3, H, W)``; ``model`` a :class:`DinoViT`-like module
    with ``prepare_tokens``, ``blocks`` and ``norm``. Blocks after ``layer`` are not run.
    """
    blocks = model.blocks
    index = resolve_layer(len(blocks), layer)
    if is_eva(model):
        return _eva_attention(model, x, index, query_index, with_tokens)
    tokens = model.prepare_tokens(x)
    for blk in blocks[:index]:
        tokens = blk(tokens)
    block = blocks[index]
    attn = torch.softmax(query_logits(block.attn, block.norm1(tokens), query_index), dim=-1)
    out = None
    if with_tokens:
        out = block(tokens)
        if index == len(blocks) - 1:
            out = model.norm(out)
    return BlockReadout(attn, out)
