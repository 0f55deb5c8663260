"""The shared backbone: official key layout, DINO pos-embed interpolation, attention read-out."""

from __future__ import annotations

import pytest
import torch

from tests.reference_vit import ref_forward, ref_pos_embed
from trainer.model.vit import ARCHS, build_vit, interpolate_pos_encoding


def official_keys(dim: int, depth: int, patch: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official DINO backbone checkpoints, written out by hand."""
    keys = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + (224 // patch) ** 2, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        keys.update(
            {
                p + "norm1.weight": (dim,),
                p + "norm1.bias": (dim,),
                p + "attn.qkv.weight": (3 * dim, dim),
                p + "attn.qkv.bias": (3 * dim,),
                p + "attn.proj.weight": (dim, dim),
                p + "attn.proj.bias": (dim,),
                p + "norm2.weight": (dim,),
                p + "norm2.bias": (dim,),
                p + "mlp.fc1.weight": (4 * dim, dim),
                p + "mlp.fc1.bias": (4 * dim,),
                p + "mlp.fc2.weight": (dim, 4 * dim),
                p + "mlp.fc2.bias": (dim,),
            }
        )
    return keys


@pytest.mark.parametrize("arch,patch", [("vit_tiny", 16), ("vit_small", 8), ("vit_base", 16)])
def test_state_dict_matches_official_layout(arch: str, patch: int) -> None:
    spec = ARCHS[arch]
    model = build_vit(arch, patch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_keys(spec.embed_dim, spec.depth, patch)
    assert model.num_heads == spec.num_heads


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ValueError, match="vit_tiny, vit_small, vit_base"):
        build_vit("vit_huge", 16)


def test_pos_embed_always_sized_for_224_and_interpolated_like_authors() -> None:
    model = build_vit(embed_dim=32, depth=1, num_heads=2, patch_size=4)
    assert model.pos_embed.shape == (1, 1 + 56 * 56, 32)
    for gh, gw in [(8, 8), (4, 4), (30, 20), (56, 56)]:
        ours = interpolate_pos_encoding(model.pos_embed.detach(), gh, gw)
        ref = ref_pos_embed(model.pos_embed.detach(), gh, gw)
        assert ours.shape == (1, 1 + gh * gw, 32)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build_vit(embed_dim=48, depth=3, num_heads=3, patch_size=8).eval()
    with torch.no_grad():  # non-trivial weights so every term matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (224, 224)])
def test_forward_and_attention_match_explicit_reference(small_model, size) -> None:
    img = torch.randn(2, 3, *size)
    sd = {k: v.detach() for k, v in small_model.state_dict().items()}
    ref_tokens, ref_attn = ref_forward(sd, img, heads=3)
    with torch.no_grad():
        torch.testing.assert_close(small_model(img), ref_tokens[:, 0], atol=1e-5, rtol=1e-5)
        full = small_model.get_last_selfattention(img)
        cls_only = small_model.get_last_selfattention(img, cls_only=True)
        maps = small_model.get_cls_attention(img)
    torch.testing.assert_close(full, ref_attn, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cls_only[:, :, 0], ref_attn[:, :, 0], atol=1e-6, rtol=1e-5)
    gh, gw = size[0] // 8, size[1] // 8
    assert maps.shape == (2, 3, gh, gw)
    torch.testing.assert_close(
        maps, ref_attn[:, :, 0, 1:].reshape(2, 3, gh, gw), atol=1e-6, rtol=1e-5
    )
    # softmax rows sum to one over CLS + patches
    torch.testing.assert_close(full.sum(-1), torch.ones(full.shape[:-1]), atol=1e-5, rtol=0)


def test_fused_and_explicit_blocks_agree(small_model) -> None:
    img = torch.randn(2, 3, 40, 40)  # 5x5 grid, partial-patch free
    with torch.no_grad():
        fused = small_model(img)
        small_model.set_fused_attention(False)
        explicit = small_model(img)
        small_model.set_fused_attention(True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_partial_patches_are_dropped(small_model) -> None:
    with torch.no_grad():
        a = small_model.get_cls_attention(torch.randn(1, 3, 70, 53))
    assert a.shape == (1, 3, 70 // 8, 53 // 8)


def test_stochastic_depth_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = build_vit(embed_dim=32, depth=4, num_heads=2, patch_size=8, drop_path_rate=0.5)
    img = torch.randn(4, 3, 32, 32)
    model.train()
    a, b = model(img), model(img)
    assert not torch.allclose(a, b), "drop path should randomise training forwards"
    model.eval()
    torch.testing.assert_close(model(img), model(img))
    rates = [getattr(blk.drop_path1, "drop_prob", 0.0) for blk in model.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])
