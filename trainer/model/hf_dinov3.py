"""transformers ``DINOv3ViTModel`` folders: ``config.json`` plus ``model.safetensors``.

The weights are renamed to the DINOv3 authors' keys (``storage_tokens``, ``blocks.N.attn.qkv``
with its ``bias_mask``, ``blocks.N.ls1.gamma``, ``mlp.w1/w2/w3``), which
:mod:`trainer.model.dinov3` then converts to timm's layout. transformers keeps q, k and v apart
and drops the masked k bias; the renaming stacks them again with a zero k bias and the mask.
Both namings of the transformers releases are accepted (``query``/``q_proj``,
``layer_scale1.lambda1``/``.gamma``, ``patch_embeddings.weight``/``.proj.weight``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

MODEL_TYPE = "dinov3_vit"
_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "storage_tokens",
    "embeddings.mask_token": "mask_token",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "embeddings.patch_embeddings.proj.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.proj.bias": "patch_embed.proj.bias",
}
_QKV = {"query": 0, "q_proj": 0, "key": 1, "k_proj": 1, "value": 2, "v_proj": 2}
_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")


def is_hf_dinov3_config(folder: Path) -> bool:
    """Whether ``folder/config.json`` describes a transformers DINOv3 ViT."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` (a transformers DINOv3 ViT's)."""
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def _mlp_name(rest: str, gated: bool) -> str:
    names = (
        {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
        if gated
        else {"up_proj": "fc1", "down_proj": "fc2"}
    )
    head, _, tail = rest.partition(".")
    return f"mlp.{names.get(head, head)}.{tail}"


def _block_key(rest: str, gated: bool) -> str:
    rest = re.sub(r"^layer_scale(\d)\.(lambda1|gamma)$", r"ls\1.gamma", rest)
    if rest.startswith("attention."):
        rest = "attn." + rest[len("attention.") :].replace("o_proj.", "proj.")
    elif rest.startswith("mlp."):
        rest = _mlp_name(rest[len("mlp.") :], gated)
    return rest


def hf_to_authors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers DINOv3 ViT keys renamed to the authors' (q, k, v stacked, k bias masked)."""
    gated = any(k.endswith("mlp.gate_proj.weight") for k in state)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _EMBEDDINGS:
            out[_EMBEDDINGS[key]] = value
            continue
        if key.startswith("rope_embeddings."):
            continue
        m = _LAYER.match(key)
        if m is None:
            out[key] = value  # norm.weight / norm.bias
            continue
        block, rest = int(m.group(1)), m.group(2)
        parts = rest.split(".")
        if len(parts) == 3 and parts[0] == "attention" and parts[1] in _QKV:
            qkv.setdefault((block, parts[2]), {})[_QKV[parts[1]]] = value
            continue
        out[f"blocks.{block}.{_block_key(rest, gated)}"] = value
    for (block, kind), parts in qkv.items():
        _stack_qkv(out, block, kind, parts)
    return out


def _stack_qkv(
    out: dict[str, torch.Tensor], block: int, kind: str, parts: dict[int, torch.Tensor]
) -> None:
    prefix = f"blocks.{block}.attn.qkv"
    if kind == "weight":
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"layer {block} lacks one of the query/key/value weights")
        out[f"{prefix}.weight"] = torch.cat([parts[0], parts[1], parts[2]])
        return
    if 0 not in parts or 2 not in parts:
        raise ValueError(f"layer {block} has a k bias but no query/value biases")
    k_bias = parts.get(1, torch.zeros_like(parts[0]))
    mask = torch.ones(3 * parts[0].shape[0], dtype=parts[0].dtype)
    mask[parts[0].shape[0] : 2 * parts[0].shape[0]] = 0 if 1 not in parts else 1
    out[f"{prefix}.bias"] = torch.cat([parts[0], k_bias, parts[2]])
    out[f"{prefix}.bias_mask"] = mask


def check_hf_config(config: dict[str, Any], dim: int, depth: int, registers: int) -> None:
    """Refuse a ``config.json`` that disagrees with the weights, naming the field."""
    expected = {"hidden_size": dim, "num_hidden_layers": depth, "num_register_tokens": registers}
    for name, value in expected.items():
        if name in config and int(config[name]) != value:
            raise ValueError(f"config.json says {name}={config[name]}, the weights have {value}")
