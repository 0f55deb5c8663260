"""DINOv3 ViT weights written in the authors' and timm's key layouts, with random values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.model.dinov3 import Dinov3Arch, build_dinov3


def tiny_arch(glu: bool = False, qkv_bias: bool = True, depth: int = 2) -> Dinov3Arch:
    """A 2-block, 128-wide DINOv3 ViT (2 heads of 64) with patch 16 and 4 storage tokens."""
    return Dinov3Arch(
        embed_dim=128,
        depth=depth,
        num_heads=2,
        mlp_hidden=256 if glu else 512,
        glu=glu,
        qkv_bias=qkv_bias,
    )


def timm_state(arch: Dinov3Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    """timm Eva keys (``reg_token``, ``gamma_1``, ``q_bias``) with random values."""
    torch.manual_seed(seed)
    model = build_dinov3(arch)
    state = {}
    for k, v in model.state_dict().items():
        if "rope" in k:
            continue
        scale = 1.0 if k.endswith(("gamma_1", "gamma_2")) else 0.2
        state[k] = torch.randn_like(v) * scale if v.is_floating_point() else v
    return state


def authors_state(arch: Dinov3Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    """The same weights under the DINOv3 authors' names, with ``bias_mask`` and ``periods``."""
    src = timm_state(arch, seed)
    out: dict[str, torch.Tensor] = {}
    for k, v in src.items():
        if k.endswith("attn.q_bias"):
            v_bias = src[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.randn_like(v), v_bias])
            mask = torch.ones(3 * v.shape[0])
            mask[v.shape[0] : 2 * v.shape[0]] = 0
            out[k.replace("q_bias", "qkv.bias_mask")] = mask
            continue
        if k.endswith("attn.v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        k = k.replace("gamma_2", "ls2.gamma").replace("mlp.fc1_g", "mlp.w1")
        if arch.glu:
            k = k.replace("mlp.fc1_x", "mlp.w2").replace("mlp.fc2", "mlp.w3")
        out[k] = v
    quarter = arch.embed_dim // arch.num_heads // 4
    out["rope_embed.periods"] = 100.0 ** (2 * torch.arange(quarter) / (2 * quarter))
    out["mask_token"] = torch.zeros(1, arch.embed_dim)
    return out


def convnext_state() -> dict[str, torch.Tensor]:
    """A few keys of the authors' ConvNeXt backbones."""
    return {
        "downsample_layers.0.0.weight": torch.randn(8, 3, 4, 4),
        "stages.0.0.dwconv.weight": torch.randn(8, 1, 7, 7),
        "norm.weight": torch.ones(8),
    }


def rope_angles(h: int, w: int, head_dim: int, temperature: float = 100.0) -> torch.Tensor:
    """The DINOv3 RoPE angles ``(h*w, head_dim/2)``: patch centres normalised to [-1, 1]
    (each axis by its own length), periods ``T^(2j/(head_dim/2))`` for y then x."""
    quarter = head_dim // 4
    periods = temperature ** (2 * torch.arange(quarter, dtype=torch.float64) / (head_dim // 2))
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([yy.flatten(), xx.flatten()], -1)  # (hw, 2)
    ang = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # (hw, 2, quarter)
    return ang.flatten(1)  # (hw, head_dim/2)


def apply_rope(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of ``x`` ``(..., N, head_dim)`` by angles ``(N, head_dim/2)``."""
    ang = torch.cat([ang, ang], -1).to(x.dtype)
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * ang.cos() + rot * ang.sin()


def write_hf_folder(folder: Path, arch: Dinov3Arch, seed: int = 0) -> Path:
    """A transformers ``DINOv3ViTModel`` folder (``config.json`` + ``model.safetensors``) holding
    the weights of :func:`timm_state` ``(arch, seed)`` under transformers' names."""
    src = timm_state(arch, seed)
    d = arch.embed_dim
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": src["cls_token"],
        "embeddings.register_tokens": src["reg_token"],
        "embeddings.mask_token": torch.zeros(1, 1, d),
        "embeddings.patch_embeddings.weight": src["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": src["patch_embed.proj.bias"],
        "norm.weight": src["norm.weight"],
        "norm.bias": src["norm.bias"],
    }
    mlp = {"fc1_g": "gate_proj", "fc1_x": "up_proj", "fc1": "up_proj", "fc2": "down_proj"}
    for i in range(arch.depth):
        b, lay = f"blocks.{i}.", f"layer.{i}."
        w = src[b + "attn.qkv.weight"]
        for j, name in enumerate(("query", "key", "value")):
            out[lay + f"attention.{name}.weight"] = w[j * d : (j + 1) * d].clone()
        out[lay + "attention.query.bias"] = src[b + "attn.q_bias"]
        out[lay + "attention.value.bias"] = src[b + "attn.v_bias"]
        for part in ("weight", "bias"):
            out[lay + f"attention.o_proj.{part}"] = src[b + f"attn.proj.{part}"]
            out[lay + f"norm1.{part}"] = src[b + f"norm1.{part}"]
            out[lay + f"norm2.{part}"] = src[b + f"norm2.{part}"]
        out[lay + "layer_scale1.lambda1"] = src[b + "gamma_1"]
        out[lay + "layer_scale2.lambda1"] = src[b + "gamma_2"]
        for key, value in src.items():
            if key.startswith(b + "mlp."):
                name, part = key[len(b + "mlp.") :].split(".")
                out[lay + f"mlp.{mlp[name]}.{part}"] = value
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "model.safetensors"))
    config = {
        "model_type": "dinov3_vit",
        "architectures": ["DINOv3ViTModel"],
        "hidden_size": d,
        "num_hidden_layers": arch.depth,
        "num_attention_heads": arch.num_heads,
        "num_register_tokens": arch.storage,
        "patch_size": 16,
        "use_gated_mlp": arch.glu,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder
