"""DINOv3 ViTs: format detection, arch inference, loading, and the attention read-out.

Weights are random and written in the authors' and timm's key layouts (tests/dinov3_layouts.py).
References: the softmax rows captured from timm's Eva with fused attention off, and a q/k/RoPE
computation written here from the DINOv3 equations on the block's own input.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.dinov3_layouts import (
    apply_rope,
    authors_state,
    convnext_state,
    rope_angles,
    timm_state,
    tiny_arch,
    write_hf_folder,
)
from trainer.model.block_attention import block_attention, prefix_tokens
from trainer.model.checkpoint import CheckpointError, load_backbone
from trainer.model.dinov3 import SAT493M_MEAN, count_params, infer_dinov3_arch, max_params


def _captured_rows(model, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Softmax rows of block ``layer`` from timm's own unfused attention (a dropout hook)."""
    seen = {}
    for blk in model.blocks:
        blk.attn.fused_attn = False
    hook = model.blocks[layer].attn.attn_drop.register_forward_hook(
        lambda _m, _i, out: seen.setdefault("a", out)
    )
    try:
        model.forward_features(x)
    finally:
        hook.remove()
    return seen["a"]


def _explicit_rows(model, x: torch.Tensor, layer: int, rows: list[int]) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) from the block's input, with RoPE written from the paper."""
    seen = {}
    hook = model.blocks[layer].norm1.register_forward_hook(
        lambda _m, _i, out: seen.setdefault("h", out)
    )
    with torch.no_grad():
        model.forward_features(x)
    hook.remove()
    h, attn = seen["h"].double(), model.blocks[layer].attn
    b, n, d = h.shape
    heads, hd = attn.num_heads, d // attn.num_heads
    w = attn.qkv.weight.double()
    q = h @ w[:d].T + attn.q_bias.double()
    k = h @ w[d : 2 * d].T  # the k bias is masked to zero
    q, k = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k))
    gh, gw = x.shape[-2] // 16, x.shape[-1] // 16
    ang = rope_angles(gh, gw, hd)
    q = torch.cat([q[:, :, :5], apply_rope(q[:, :, 5:], ang)], 2)
    k = torch.cat([k[:, :, :5], apply_rope(k[:, :, 5:], ang)], 2)
    return torch.softmax(q[:, :, rows] @ k.transpose(-2, -1) / hd**0.5, -1)


@pytest.fixture(scope="module", params=[False, True], ids=["mlp", "swiglu"])
def authors_model(request, tmp_path_factory):
    arch = tiny_arch(glu=request.param)
    path = tmp_path_factory.mktemp("v3") / "dinov3_vits16_pretrain_lvd1689m-test.pth"
    torch.save(authors_state(arch, seed=3), path)
    model, info = load_backbone(path)
    return model, info, arch


def test_authors_file_loads_with_inferred_arch(authors_model):
    model, info, arch = authors_model
    assert info.family == "dinov3" and info.registers == 4 and info.patch_size == 16
    assert info.layout == "authors" and info.dinov3.glu == arch.glu
    assert prefix_tokens(model) == 5
    assert info.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_cls_maps_equal_timm_unfused_and_paper_rope(authors_model, size):
    model, _, _ = authors_model
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        for layer in (0, -1):
            got = block_attention(model, x, layer).attention
            ref = _captured_rows(model, x, layer)[:, :, :1]
            assert torch.allclose(got, ref, atol=1e-5)
            exp = _explicit_rows(model, x, layer, [0])
            assert torch.allclose(got.double(), exp, atol=1e-5)


def test_query_row_gets_its_rope_and_mass_splits(authors_model):
    model, _, _ = authors_model
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        got = block_attention(model, x, 1, (0, 9)).attention
    exp = _explicit_rows(model, x, 1, [0, 9])
    assert torch.allclose(got.double(), exp, atol=1e-5)
    cls = got[0, :, 0]
    maps, storage, self_att = cls[:, 5:].sum(-1), cls[:, 1:5].sum(-1), cls[:, 0]
    assert torch.allclose(maps + storage, 1 - self_att, atol=1e-6)


def test_timm_safetensors_and_sat493m(tmp_path):
    arch = tiny_arch()
    path = tmp_path / "vit_small_patch16_dinov3.sat493m.safetensors"
    save_file(timm_state(arch, seed=5), str(path))
    model, info = load_backbone(path)
    assert info.layout == "timm" and info.mean == SAT493M_MEAN
    ref = timm_state(arch, seed=5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())


def test_missing_bias_mask_is_refused(tmp_path):
    state = authors_state(tiny_arch(), seed=1)
    del state["blocks.1.attn.qkv.bias_mask"]
    torch.save(state, tmp_path / "dinov3.pth")
    with pytest.raises(CheckpointError, match="bias_mask is missing"):
        load_backbone(tmp_path / "dinov3.pth")


def test_convnext_is_refused(tmp_path):
    torch.save(convnext_state(), tmp_path / "dinov3_convnext_tiny.pth")
    with pytest.raises(CheckpointError, match="ConvNeXt backbones have no attention"):
        load_backbone(tmp_path / "dinov3_convnext_tiny.pth")


def test_7b_params_from_shapes_without_allocating(monkeypatch):
    dim, depth, hidden = 4096, 40, 8192
    shapes = {"patch_embed.proj.weight": (dim, 3, 16, 16), "storage_tokens": (1, 4, dim)}
    for i in range(depth):
        shapes[f"blocks.{i}.attn.qkv.weight"] = (3 * dim, dim)
        shapes[f"blocks.{i}.attn.proj.weight"] = (dim, dim)
        for name in ("w1", "w2"):
            shapes[f"blocks.{i}.mlp.{name}.weight"] = (hidden, dim)
        shapes[f"blocks.{i}.mlp.w3.weight"] = (dim, hidden)
    assert count_params(shapes) > 6e9 > max_params()
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert infer_dinov3_arch(meta).name == "vit_7b"
    monkeypatch.setenv("DINO_MAX_PARAMS", "1e10")
    assert max_params() == 1e10


@pytest.mark.parametrize("glu", [False, True], ids=["mlp", "swiglu"])
def test_transformers_folder_loads_the_same_weights(tmp_path, glu):
    arch = tiny_arch(glu=glu)
    folder = write_hf_folder(tmp_path / "dinov3-vits16-pretrain-lvd1689m", arch, seed=8)
    model, info = load_backbone(folder)
    assert (info.layout, info.family, info.registers) == ("transformers", "dinov3", 4)
    ref = timm_state(arch, seed=8)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.items())
    _, alone = load_backbone(folder / "model.safetensors")  # the weights file on its own
    assert alone.layout == "transformers"


def test_over_the_limit_is_refused_before_building(tmp_path, monkeypatch):
    torch.save(authors_state(tiny_arch(), seed=2), tmp_path / "dinov3.pth")
    monkeypatch.setenv("DINO_MAX_PARAMS", "1000")
    with pytest.raises(CheckpointError, match="over the DINO_MAX_PARAMS limit of 1e"):
        load_backbone(tmp_path / "dinov3.pth")
