"""Hugging Face ``transformers`` DINOv2 weights -> the DINOv2 authors' key layout.

``Dinov2Model`` and ``Dinov2WithRegistersModel`` save ``model.safetensors`` with keys such as
``embeddings.position_embeddings`` and ``encoder.layer.N.attention.attention.query.weight``
(under a ``dinov2.`` / ``dinov2_with_registers.`` prefix in the classification models).
timm converts the authors' layout but not this one, so this module renames every key to the
authors' name (query/key/value concatenated into ``attn.qkv``) and leaves the rest to timm.
Classifier keys outside the backbone prefix are ignored; any other unknown key is an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
MODEL_TYPES = ("dinov2", "dinov2_with_registers")
_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_LAYER = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.w12.weight",
    "mlp.weights_in.bias": "mlp.w12.bias",
    "mlp.weights_out.weight": "mlp.w3.weight",
    "mlp.weights_out.bias": "mlp.w3.bias",
}
_QKV = ("query", "key", "value")
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_QKV_KEY = re.compile(r"attention\.attention\.(query|key|value)\.(weight|bias)")


def hf_prefix(state: dict[str, Any]) -> str | None:
    """The key prefix of a transformers DINOv2 backbone in ``state``, or None if there is none."""
    for key in state:
        if key.endswith(PATCH_KEY):
            return key[: -len(PATCH_KEY)]
    return None


def _rename(
    name: str,
    value: torch.Tensor,
    out: dict[str, torch.Tensor],
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]],
) -> None:
    if name in _EMBEDDINGS:
        out[_EMBEDDINGS[name]] = value
        return
    layer = _LAYER_KEY.fullmatch(name)
    if layer is None:
        raise ValueError(f"unexpected transformers key {name!r}")
    index = int(layer[1])
    rest = layer[2]
    part = _QKV_KEY.fullmatch(rest)
    if part is not None:
        qkv.setdefault((index, part[2]), {})[part[1]] = value
    elif rest in _LAYER:
        out[f"blocks.{index}.{_LAYER[rest]}"] = value
    else:
        raise ValueError(f"unexpected transformers key {name!r}")


def hf_to_authors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename a transformers DINOv2 state dict (keys under ``prefix``) to the authors' keys."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor):
            _rename(key[len(prefix) :], value, out, qkv)
    for (index, kind), parts in sorted(qkv.items()):
        missing = [n for n in _QKV if n not in parts]
        if missing:
            raise ValueError(
                f"encoder.layer.{index}.attention.attention lacks {', '.join(missing)}.{kind}"
            )
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    if "cls_token" in out and "mask_token" not in out:  # marks the authors' layout for timm
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
    return out


def read_config(folder: Path) -> dict[str, Any] | None:
    """``config.json`` of a transformers model folder (None when absent), checked for its type."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPES:
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"{path.name} describes a {kind!r} model; supported: {', '.join(MODEL_TYPES)}"
        )
    return config


def check_config(config: dict[str, Any], dim: int, depth: int, patch: int, registers: int) -> int:
    """Compare ``config.json`` with the weights; returns its ``num_attention_heads``."""
    expected = {
        "hidden_size": dim,
        "num_hidden_layers": depth,
        "patch_size": patch,
        "num_register_tokens": registers,
    }
    for field, value in expected.items():
        got = config.get(field, 0 if field == "num_register_tokens" else value)
        if got != value:
            raise ValueError(f"config.json says {field}={got} but the weights have {value}")
    eps = float(config.get("layer_norm_eps", 1e-6))
    if abs(eps - 1e-6) > 1e-12:
        raise ValueError(f"config.json layer_norm_eps={eps} is not supported; DINOv2 uses 1e-6")
    heads = int(config.get("num_attention_heads", max(dim // 64, 1)))
    if heads < 1 or dim % heads:
        raise ValueError(
            f"config.json num_attention_heads={heads} does not divide hidden_size {dim}"
        )
    return heads
