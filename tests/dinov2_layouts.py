"""Random DINOv2 weights in the three layouts people have, written out by hand, and a reference.

* the authors' hub layout (``dinov2/models/vision_transformer.py``): ``cls_token``, ``mask_token``,
  ``pos_embed`` with a CLS entry, ``register_tokens``, ``blocks.N.ls1.gamma``, ``mlp.fc1``/``fc2``
  or, for the SwiGLU FFN of giant, ``mlp.w12``/``mlp.w3``;
* timm's layout (``vit_*_patch14[_reg4]_dinov2``): for register models ``reg_token`` and a
  pos-embed without the CLS entry, which is added to ``cls_token`` (timm adds it before
  concatenating); SwiGLU as ``mlp.fc1``/``mlp.fc2``;
* transformers' layout (``Dinov2Model`` / ``Dinov2WithRegistersModel``): ``embeddings.*``,
  ``encoder.layer.N.attention.attention.{query,key,value}``, ``layer_scale1.lambda1``,
  ``mlp.weights_in``/``weights_out``, ``layernorm``.

:func:`ref_cls_row` is the authors' forward pass written from their code with nothing from the
project: tokens, their ``interpolate_pos_encoding`` (per-variant offset/antialias), registers
inserted after the CLS token, LayerScale blocks with explicit softmax attention.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

GRID = 37  # 518 / 14
PATCH = 14


def authors_state(
    dim: int,
    depth: int,
    registers: int,
    glu: bool = False,
    seed: int = 0,
    hidden: int | None = None,
) -> dict[str, torch.Tensor]:
    """Random weights with the authors' key names (non-trivial LayerScale and norms)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    hidden = hidden or 4 * dim
    sd = {
        "cls_token": r(1, 1, dim),
        "mask_token": torch.zeros(1, dim),
        "pos_embed": r(1, 1 + GRID * GRID, dim),
        "patch_embed.proj.weight": r(dim, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": r(dim, scale=0.1),
        "norm.weight": 1 + r(dim, scale=0.1),
        "norm.bias": r(dim, scale=0.1),
    }
    if registers:
        sd["register_tokens"] = r(1, registers, dim)
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(dim, scale=0.1),
                p + "norm1.bias": r(dim, scale=0.1),
                p + "attn.qkv.weight": r(3 * dim, dim, scale=0.15),
                p + "attn.qkv.bias": r(3 * dim, scale=0.1),
                p + "attn.proj.weight": r(dim, dim, scale=0.1),
                p + "attn.proj.bias": r(dim, scale=0.1),
                p + "ls1.gamma": r(dim, scale=0.5),
                p + "ls2.gamma": r(dim, scale=0.5),
                p + "norm2.weight": 1 + r(dim, scale=0.1),
                p + "norm2.bias": r(dim, scale=0.1),
            }
        )
        if glu:
            sd.update(
                {
                    p + "mlp.w12.weight": r(2 * hidden, dim, scale=0.1),
                    p + "mlp.w12.bias": r(2 * hidden, scale=0.1),
                    p + "mlp.w3.weight": r(dim, hidden, scale=0.1),
                    p + "mlp.w3.bias": r(dim, scale=0.1),
                }
            )
        else:
            sd.update(
                {
                    p + "mlp.fc1.weight": r(hidden, dim, scale=0.1),
                    p + "mlp.fc1.bias": r(hidden, scale=0.1),
                    p + "mlp.fc2.weight": r(dim, hidden, scale=0.1),
                    p + "mlp.fc2.bias": r(dim, scale=0.1),
                }
            )
    return sd


def timm_state(authors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in timm's layout, converted here by hand."""
    sd = {
        k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v.clone()
        for k, v in authors.items()
        if k not in ("mask_token", "register_tokens")
    }
    if "register_tokens" in authors:
        sd["reg_token"] = authors["register_tokens"].clone()
        sd["cls_token"] = authors["cls_token"] + authors["pos_embed"][:, :1]
        sd["pos_embed"] = authors["pos_embed"][:, 1:].clone()
    return sd


_HF_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
}


def hf_state(authors: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The same weights with transformers' key names (query/key/value split), under ``prefix``."""
    top = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "register_tokens": "embeddings.register_tokens",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    out = {}
    for key, value in authors.items():
        if key in top:
            out[top[key]] = value.clone()
            continue
        _, i, rest = key.split(".", 2)
        layer = f"encoder.layer.{i}."
        module, kind = rest.rsplit(".", 1)
        if module == "attn.qkv":
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{layer}attention.attention.{name}.{kind}"] = part.clone()
        elif module in ("ls1", "ls2"):
            out[f"{layer}layer_scale{module[-1]}.lambda1"] = value.clone()
        else:
            out[f"{layer}{_HF_LAYER[module]}.{kind}"] = value.clone()
    return {prefix + k: v for k, v in out.items()}


def write_hf_folder(
    folder: Path, authors: dict[str, torch.Tensor], heads: int, glu: bool = False
) -> Path:
    """A transformers model folder: ``model.safetensors`` and ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    registers = int(authors["register_tokens"].shape[1]) if "register_tokens" in authors else 0
    depth = 1 + max(int(k.split(".")[1]) for k in authors if k.startswith("blocks."))
    dim = int(authors["cls_token"].shape[-1])
    config = {
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": dim,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "patch_size": PATCH,
        "image_size": 518,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "use_swiglu_ffn": glu,
        "hidden_act": "gelu",
    }
    if registers:
        config["num_register_tokens"] = registers
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in hf_state(authors).items()}, str(folder / "model.safetensors")
    )
    return folder


def authors_interpolate(
    pos_embed: torch.Tensor, h: int, w: int, offset: float, antialias: bool
) -> torch.Tensor:
    """The authors' ``interpolate_pos_encoding`` for an ``h x w`` image (CLS entry first)."""
    n = pos_embed.shape[1] - 1
    h0, w0 = h // PATCH, w // PATCH
    if n == h0 * w0 and h == w:
        return pos_embed
    m = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": (float(h0 + offset) / m, float(w0 + offset) / m)}
    else:
        kwargs = {"size": (h0, w0)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    assert tuple(grid.shape[-2:]) == (h0, w0)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def _mlp(h: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    if p + "mlp.w12.weight" in sd:  # SwiGLUFFN: silu(x1) * x2, then w3
        x1, x2 = F.linear(h, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
        return F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
    h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
    return F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def _attention(
    h: torch.Tensor, sd: dict[str, torch.Tensor], p: str, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, d = h.shape
    qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
    out = F.linear(
        (attn @ v).transpose(1, 2).reshape(b, n, d),
        sd[p + "attn.proj.weight"],
        sd[p + "attn.proj.bias"],
    )
    return out, attn


def ref_attention(
    sd: dict[str, torch.Tensor], img: torch.Tensor, heads: int, layer: int = -1
) -> torch.Tensor:
    """Block ``layer``'s full attention ``(B, heads, T, T)`` in the authors' model (-1: last)."""
    registers = int(sd["register_tokens"].shape[1]) if "register_tokens" in sd else 0
    offset, antialias = (0.0, True) if registers else (0.1, False)
    _, _, h, w = img.shape
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + authors_interpolate(sd["pos_embed"], h, w, offset, antialias)
    if registers:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        out, attn = _attention(_ln(x, sd, p + "norm1"), sd, p, heads)
        if i == layer % depth:
            return attn
        x = x + sd[p + "ls1.gamma"] * out
        x = x + sd[p + "ls2.gamma"] * _mlp(_ln(x, sd, p + "norm2"), sd, p)
    raise AssertionError("unreachable")


def ref_cls_row(sd: dict[str, torch.Tensor], img: torch.Tensor, heads: int) -> torch.Tensor:
    """The last block's CLS row over every token, ``(heads, T)`` for one image."""
    return ref_attention(sd, img, heads)[0, :, 0]
