"""Analytic FLOP counts for DINO ViTs, and model FLOP utilisation (MFU).

One multiply-add counts as 2 FLOPs (the convention of ``torch.utils.flop_counter``).
Counted: patch embedding, QKV, attention scores ``QK^T`` and ``AV``, output projection, MLP
and the DINO head's linear layers. Ignored: norms, softmax, GELU, biases, positional
embeddings (all O(tokens * dim), well under 1% for ViT-S).

A training step is estimated as ``3 x`` the student forward on all crops (forward + a
backward costing about twice the forward) plus one teacher forward on the global crops.
"""

from __future__ import annotations

from trainer.model.vit import arch_spec
from trainer.train.loss import N_TEACHER_VIEWS

IMAGE_CHANNELS = 3


def _linear_flops(tokens: int, in_features: int, out_features: int) -> float:
    return 2.0 * tokens * in_features * out_features


def vit_forward_flops(
    embed_dim: int,
    depth: int,
    num_heads: int,
    patch_size: int,
    image_size: int,
    mlp_ratio: float = 4.0,
) -> float:
    """FLOPs of one ViT backbone forward on one square ``image_size`` image (no head).

    With ``N = (image_size // patch_size)^2 + 1`` tokens and width ``D``, each block costs
    ``2 * N * D * (3D + D + 2 * mlp_ratio * D)`` for the linear layers plus ``4 * N^2 * D``
    for ``QK^T`` and ``AV`` (summed over heads, so ``num_heads`` does not change the total).
    """
    if min(embed_dim, depth, num_heads, patch_size) < 1 or image_size < patch_size:
        raise ValueError(
            f"need positive dims and image_size >= patch_size; got "
            f"embed_dim={embed_dim}, depth={depth}, num_heads={num_heads}, "
            f"patch_size={patch_size}, image_size={image_size}"
        )
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1
    hidden = int(embed_dim * mlp_ratio)
    patch_embed = _linear_flops(patches, IMAGE_CHANNELS * patch_size * patch_size, embed_dim)
    linear = (
        _linear_flops(tokens, embed_dim, 3 * embed_dim)
        + _linear_flops(tokens, embed_dim, embed_dim)
        + _linear_flops(tokens, embed_dim, hidden)
        + _linear_flops(tokens, hidden, embed_dim)
    )
    attention = 2 * 2.0 * tokens * tokens * embed_dim  # QK^T and AV
    return patch_embed + depth * (linear + attention)


def dino_head_flops(
    in_dim: int,
    out_dim: int = 65536,
    hidden_dim: int = 2048,
    bottleneck_dim: int = 256,
    nlayers: int = 3,
) -> float:
    """FLOPs of one DINO head forward on one embedding (MLP -> bottleneck -> last layer)."""
    if out_dim <= 0:
        return 0.0
    nlayers = max(nlayers, 1)
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim, out_dim]
    return sum(_linear_flops(1, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))


def dino_step_flops_per_image(
    arch: str = "vit_small",
    patch_size: int = 16,
    global_crops_size: int = 224,
    local_crops_size: int = 96,
    local_crops_number: int = 10,
    n_global: int = N_TEACHER_VIEWS,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    out_dim: int = 65536,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 256,
    head_nlayers: int = 3,
    mlp_ratio: float = 4.0,
) -> float:
    """FLOPs per source image of one DINO step: ``3 * student(all crops) + teacher(globals)``.

    The model is named by ``arch`` (``vit_tiny|vit_small|vit_base``) unless ``embed_dim``,
    ``depth`` and ``num_heads`` are all given. The head is included; ``out_dim=0`` omits it.
    """
    if embed_dim is None or depth is None or num_heads is None:
        spec = arch_spec(arch)
        embed_dim = spec.embed_dim
        depth = spec.depth
        num_heads = spec.num_heads
    if local_crops_number < 0 or n_global < 1:
        raise ValueError(
            f"need n_global >= 1 and local_crops_number >= 0, got {n_global}, {local_crops_number}"
        )
    head = dino_head_flops(embed_dim, out_dim, head_hidden_dim, head_bottleneck_dim, head_nlayers)

    def backbone(size: int) -> float:
        return vit_forward_flops(embed_dim, depth, num_heads, patch_size, size, mlp_ratio)

    global_fwd = backbone(global_crops_size) + head
    local_fwd = backbone(local_crops_size) + head if local_crops_number else 0.0
    student = n_global * global_fwd + local_crops_number * local_fwd
    teacher = n_global * global_fwd
    return 3.0 * student + teacher


def mfu(flops_per_image: float, images_per_second: float, peak_flops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s (``flops_per_image * images_per_second``) / peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0 (FLOP/s of the device), got {peak_flops}")
    return flops_per_image * images_per_second / peak_flops
