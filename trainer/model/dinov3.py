"""DINOv3 ViT backbones (Siméoni et al. 2025), held in timm's ``Eva`` with the authors' RoPE.

A DINOv3 ViT has patch 16, 4 storage tokens (timm calls them ``reg_token``), RoPE and no
learned position embedding, the masked k bias (``attn.qkv.bias_mask``), LayerScale and an MLP
or SwiGLU FFN. The architecture is read from the weights' shapes; the authors' hub keys are
converted by timm's own ``eva.checkpoint_filter_fn``. ConvNeXt backbones are refused (they have
no attention), and so is an authors' file whose ``bias_mask`` is missing (the authors' model
would compute NaN k biases).

The satellite (SAT-493M) weights use their own normalisation; a file is taken to be one when
its name contains ``sat493m`` or its safetensors metadata says ``"dataset": "sat493m"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import LayerNorm
from timm.models.eva import Eva, checkpoint_filter_fn

DINOV3_PATCH = 16
DINOV3_STORAGE = 4
DINOV3_IMG_SIZE = 448  # a service default: 28 x 28 patches (RoPE needs no interpolation)
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)
SIZE_NAMES = {
    (384, False): "vit_small",
    (384, True): "vit_small_plus",
    (768, False): "vit_base",
    (1024, False): "vit_large",
    (1280, True): "vit_huge_plus",
    (4096, True): "vit_7b",
}
DEFAULT_MAX_PARAMS = 1.5e9
SUPPORTED = (
    "DINOv3 ViT-S/S+/B/L/H+/7B with patch 16 and 4 storage tokens (MLP or SwiGLU FFN) in the "
    "authors' or timm's key layout"
)
_AUTHOR_DROP = (".periods", ".bias_mask", "mask_token")


class Dinov3Error(ValueError):
    """Weights that look like DINOv3 (or a DINOv3 ConvNeXt) but cannot be served; says why."""


@dataclass(frozen=True)
class Dinov3Arch:
    """Everything needed to build a DINOv3 ViT, as read from its weights."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int  # MLP fc1 width, or the SwiGLU hidden width (of each of w1/w2)
    glu: bool
    qkv_bias: bool
    storage: int = DINOV3_STORAGE
    patch_size: int = DINOV3_PATCH
    params: int = 0  # parameter count of the backbone, from the tensor shapes

    @property
    def name(self) -> str:
        """``vit_small`` / ``vit_small_plus`` / ``vit_base`` / ... or ``vit_d<dim>``."""
        return SIZE_NAMES.get((self.embed_dim, self.glu), f"vit_d{self.embed_dim}")


def max_params() -> float:
    """The largest parameter count the service loads (env ``DINO_MAX_PARAMS``, default 1.5e9)."""
    text = os.environ.get("DINO_MAX_PARAMS", "")
    try:
        return float(text) if text else DEFAULT_MAX_PARAMS
    except ValueError as exc:
        raise ValueError(f"DINO_MAX_PARAMS must be a number, got {text!r}") from exc


def is_convnext_state(keys: object) -> bool:
    """Whether the keys are a DINOv3 (or any) ConvNeXt backbone's."""
    return any(str(k).startswith("downsample_layers.") or ".dwconv." in str(k) for k in keys)


def is_authors_layout(state: dict[str, torch.Tensor]) -> bool:
    """The DINOv3 authors' keys (``storage_tokens``, ``rope_embed.periods``, ``ls1.gamma``)."""
    return "storage_tokens" in state or "rope_embed.periods" in state


def is_timm_layout(state: dict[str, torch.Tensor]) -> bool:
    """timm's Eva keys for DINOv3: ``reg_token`` and ``gamma_1`` with no ``pos_embed``."""
    return "reg_token" in state and "blocks.0.gamma_1" in state and "pos_embed" not in state


def is_dinov3_state(state: dict[str, torch.Tensor]) -> bool:
    """DINOv3 ViT weights in the authors' or timm's layout."""
    return is_authors_layout(state) or is_timm_layout(state)


def _mlp_shape(state: dict[str, torch.Tensor]) -> tuple[int, bool]:
    for gate in ("blocks.0.mlp.w1.weight", "blocks.0.mlp.fc1_g.weight"):
        if gate in state:
            return int(state[gate].shape[0]), True
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise Dinov3Error(f"no MLP weights in block 0 (mlp.fc1 or mlp.w1); supported: {SUPPORTED}")
    return int(fc1.shape[0]), False


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    """Backbone parameters from tensor shapes alone, as the served model holds them (buffers,
    pretraining keys and the authors' masked k bias excluded)."""
    total = 0
    for key, shape in shapes.items():
        if key.endswith(_AUTHOR_DROP) or key.startswith(("projectors.", "local_cls_norm")):
            continue
        n = 1
        for s in shape:
            n *= int(s)
        total += n * 2 // 3 if key.endswith("attn.qkv.bias") else n  # the masked k third
    return total


def infer_dinov3_arch(state: dict[str, torch.Tensor]) -> Dinov3Arch:
    """The architecture of DINOv3 ViT weights, from their shapes (nothing is allocated)."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None:
        raise Dinov3Error(f"missing patch_embed.proj.weight; supported: {SUPPORTED}")
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    if dim % 64:
        raise Dinov3Error(f"embed dim {dim} is not a multiple of the 64-wide heads; {SUPPORTED}")
    blocks = [int(k.split(".")[1]) for k in state if k.startswith("blocks.")]
    if not blocks:
        raise Dinov3Error(f"no transformer blocks in the weights; supported: {SUPPORTED}")
    storage = state.get("storage_tokens", state.get("reg_token"))
    hidden, glu = _mlp_shape(state)
    qkv_bias = "blocks.0.attn.qkv.bias" in state or "blocks.0.attn.q_bias" in state
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return Dinov3Arch(
        embed_dim=dim,
        depth=1 + max(blocks),
        num_heads=dim // 64,
        mlp_hidden=hidden,
        glu=glu,
        qkv_bias=qkv_bias,
        storage=0 if storage is None else int(storage.shape[1]),
        patch_size=patch,
        params=count_params(shapes),
    )


def build_dinov3(arch: Dinov3Arch) -> Eva:
    """A randomly initialised timm ``Eva`` of ``arch`` with the DINOv3 RoPE (load weights)."""
    ratio = (arch.mlp_hidden + 0.5) / arch.embed_dim  # timm sizes as int(dim * ratio)
    glu = {"swiglu_mlp": True, "swiglu_align_to": 1} if arch.glu else {}
    model = Eva(
        img_size=DINOV3_IMG_SIZE,
        patch_size=arch.patch_size,
        num_classes=0,
        global_pool="token",
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        qkv_bias=arch.qkv_bias,
        mlp_ratio=ratio,
        init_values=1.0e-5,
        dynamic_img_size=True,
        rope_type="dinov3",
        rope_temperature=100,
        rope_rotate_half=True,
        use_rot_pos_emb=True,
        use_abs_pos_emb=False,
        num_reg_tokens=arch.storage,
        use_fc_norm=False,
        norm_layer=partial(LayerNorm, eps=1e-5),
        **glu,
    )
    model.patch_size = arch.patch_size  # as DinoViT has it (the service crops to multiples)
    return model


def _check_bias_mask(state: dict[str, torch.Tensor], arch: Dinov3Arch) -> dict[str, torch.Tensor]:
    """Apply the authors' ``bias_mask`` to ``qkv.bias``; refuse a missing or non-zero-k mask."""
    out = dict(state)
    for i in range(arch.depth):
        bias = state.get(f"blocks.{i}.attn.qkv.bias")
        if bias is None:
            continue
        mask = state.get(f"blocks.{i}.attn.qkv.bias_mask")
        if mask is None:
            raise Dinov3Error(
                f"blocks.{i}.attn.qkv.bias_mask is missing: the authors' model would compute "
                "NaN k biases from it; re-export the checkpoint with its buffers"
            )
        if not torch.isfinite(mask).all():
            raise Dinov3Error(f"blocks.{i}.attn.qkv.bias_mask holds NaN or inf values")
        masked = bias * mask
        dim = masked.shape[0] // 3
        if masked[dim : 2 * dim].abs().max() > 0:
            raise Dinov3Error(f"blocks.{i}.attn.qkv has a non-zero k bias; {SUPPORTED}")
        out[f"blocks.{i}.attn.qkv.bias"] = masked
    return out


def to_timm_layout(state: dict[str, torch.Tensor], arch: Dinov3Arch) -> dict[str, torch.Tensor]:
    """The authors' keys converted by timm's ``checkpoint_filter_fn``; timm's keys unchanged."""
    if not is_authors_layout(state):
        return state
    state = _check_bias_mask(state, arch)
    with torch.device("meta"):
        target = build_dinov3(arch)
    return checkpoint_filter_fn(state, target)


def is_sat493m(name: str, meta: dict[str, str] | None = None) -> bool:
    """Whether a file holds the satellite weights (its name or its metadata says so)."""
    meta = meta or {}
    return "sat493m" in name.lower() or meta.get("dataset", "").lower() == "sat493m"
