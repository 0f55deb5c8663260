"""DINOv2 with and without registers: every format loads, CLS attention is the authors'.

Random weights are written in the authors', timm's and transformers' key layouts by hand
(tests/dinov2_layouts.py). At 518 px (the native grid) the CLS row must equal an explicit
computation on timm's own ``VisionTransformer``; at other sizes it must equal the authors'
forward pass with their per-variant ``interpolate_pos_encoding``, written in the test.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import SwiGLUPacked
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tests.dinov2_layouts import (
    authors_interpolate,
    authors_state,
    hf_state,
    ref_cls_row,
    timm_state,
    write_hf_folder,
)
from trainer.model.block_attention import block_attention
from trainer.model.checkpoint import CheckpointError, load_backbone, read_backbone
from trainer.model.dinov2 import Dinov2Arch, build_dinov2, infer_dinov2_arch, to_timm_layout
from trainer.model.hf_dinov2 import hf_to_authors
from trainer.model.vit import build_vit, interpolate_pos_encoding

DIM, DEPTH, HEADS = 128, 2, 2
GLU_HIDDEN = 192  # SwiGLU hidden width of the giant-like test model (fc1 / w12 has twice this)
GRID_518 = 37 * 37
SIZES = [(224, 308), (700, 560)]  # a 16x22 grid (downsampled pos-embed) and 50x40 (upsampled)


def timm_reference_model(
    sd: dict[str, torch.Tensor], registers: int, glu: bool
) -> VisionTransformer:
    """timm's own ViT configured like ``vit_*_patch14[_reg4]_dinov2``, loading ``sd`` strictly."""
    kwargs = (
        {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "mlp_ratio": 2 * GLU_HIDDEN / DIM}
        if glu
        else {}
    )
    model = VisionTransformer(
        img_size=518,
        patch_size=14,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        init_values=1.0,
        num_classes=0,
        reg_tokens=registers,
        no_embed_class=registers > 0,
        **kwargs,
    )
    model.load_state_dict(sd, strict=True)
    return model.eval()


def timm_cls_row(model: VisionTransformer, img: torch.Tensor) -> torch.Tensor:
    """The last block's CLS softmax row computed explicitly from timm's modules, ``(heads, T)``."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(img)))
    for blk in model.blocks[:-1]:
        x = blk(x)
    last = model.blocks[-1]
    h = last.norm1(x)
    b, n, d = h.shape
    q, k, _ = last.attn.qkv(h).reshape(b, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
    return torch.softmax(q @ k.transpose(-2, -1) * last.attn.scale, dim=-1)[0, :, 0]


def our_cls_row(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    return block_attention(model, img, -1, (0,)).attention[0, :, 0]


@pytest.fixture(scope="module", params=[0, 4], ids=["plain", "reg4"])
def variant(request, tmp_path_factory):
    """One variant's weights (authors' layout), timm's reference model, and one file per format."""
    registers = request.param
    folder = tmp_path_factory.mktemp(f"dinov2_reg{registers}")
    sd = authors_state(DIM, DEPTH, registers, seed=registers)
    timm_sd = timm_state(sd)
    files = {
        "authors": folder / f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth",
        "timm-safetensors": folder / "timm.safetensors",
        "timm-pth": folder / "timm.pth",
        "transformers-folder": folder / "hf_model",
        "transformers-file": folder / "hf.safetensors",
    }
    torch.save(sd, files["authors"])
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(files["timm-safetensors"]))
    torch.save({"state_dict": timm_sd}, files["timm-pth"])
    write_hf_folder(files["transformers-folder"], sd, HEADS)
    classifier = {"classifier.weight": torch.zeros(10, 2 * DIM), "classifier.bias": torch.zeros(10)}
    prefix = "dinov2_with_registers." if registers else "dinov2."
    save_file({**hf_state(sd, prefix), **classifier}, str(files["transformers-file"]))
    return {
        "registers": registers,
        "sd": sd,
        "timm": timm_reference_model(timm_sd, registers, False),
        "files": files,
    }


LAYOUTS = {
    "authors": "authors",
    "timm-safetensors": "timm",
    "timm-pth": "timm",
    "transformers-folder": "transformers",
    "transformers-file": "transformers",
}


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_each_format_loads_with_its_architecture(variant, fmt):
    model, info = load_backbone(variant["files"][fmt])
    assert (
        info.family,
        info.registers,
        info.patch_size,
        info.num_heads,
        info.depth,
        info.embed_dim,
    ) == ("dinov2", variant["registers"], 14, HEADS, DEPTH, DIM)
    assert info.layout == LAYOUTS[fmt]
    assert model.num_prefix_tokens == 1 + variant["registers"]
    assert model.blocks[0].ls1.gamma.shape == (DIM,)  # LayerScale
    torch.testing.assert_close(
        model.blocks[1].ls2.gamma, variant["sd"]["blocks.1.ls2.gamma"], rtol=0, atol=0
    )


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_cls_attention_at_518_equals_timm(variant, fmt):
    model, _ = load_backbone(variant["files"][fmt])
    img = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = our_cls_row(model, img), timm_cls_row(variant["timm"], img)
        also = model.get_last_selfattention(img, cls_only=True)[0, :, 0]
    assert ours.shape == (HEADS, 1 + variant["registers"] + GRID_518)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(also, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", list(LAYOUTS))
@pytest.mark.parametrize("size", SIZES, ids=["down", "up"])
def test_cls_attention_at_other_sizes_uses_the_authors_interpolation(variant, fmt, size):
    model, _ = load_backbone(variant["files"][fmt])
    img = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = our_cls_row(model, img)
        ref = ref_cls_row(variant["sd"], img, HEADS)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("registers", [0, 4])
def test_the_variants_interpolations_differ_from_each_other_and_from_timm(registers):
    """The settings matter: the other variant's, or timm's resampling, give other embeddings."""
    pos = authors_state(DIM, 1, registers, seed=5)["pos_embed"]
    offset, antialias = (0.0, True) if registers else (0.1, False)
    for h, w in SIZES:
        gh, gw = h // 14, w // 14
        ours = interpolate_pos_encoding(pos, gh, gw, 1, offset, antialias)
        torch.testing.assert_close(
            ours, authors_interpolate(pos, h, w, offset, antialias), rtol=0, atol=0
        )
        other = authors_interpolate(pos, h, w, 0.1 if registers else 0.0, not antialias)
        timm_way = resample_abs_pos_embed(pos, (gh, gw), (37, 37), num_prefix_tokens=1)
        assert (ours - other).abs().max() > 1e-3
        assert (
            ours - timm_way
        ).abs().max() > 1e-3 or registers  # timm resamples like the register models


def test_swiglu_giant_layout_loads_and_matches(tmp_path):
    """The giant's SwiGLU FFN (authors' w12/w3, transformers' weights_in/out) at small width."""
    sd = authors_state(DIM, DEPTH, 4, glu=True, seed=3, hidden=GLU_HIDDEN)
    torch.save(sd, tmp_path / "giant_like.pth")
    write_hf_folder(tmp_path / "giant_hf", sd, HEADS, glu=True)
    timm_model = timm_reference_model(timm_state(sd), 4, glu=True)
    img = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(4))
    small = torch.randn(1, 3, 238, 322, generator=torch.Generator().manual_seed(5))
    for path in (tmp_path / "giant_like.pth", tmp_path / "giant_hf"):
        model, info = load_backbone(path)
        assert (
            info.dinov2 is not None and info.dinov2.glu and info.dinov2.mlp_hidden == 2 * GLU_HIDDEN
        )
        with torch.no_grad():
            torch.testing.assert_close(
                our_cls_row(model, img), timm_cls_row(timm_model, img), rtol=0, atol=1e-5
            )
            torch.testing.assert_close(
                our_cls_row(model, small), ref_cls_row(sd, small, HEADS), rtol=0, atol=1e-5
            )


def _meta_authors_state(dim: int, depth: int, registers: int, glu: bool) -> dict[str, torch.Tensor]:
    """Shapes only (meta tensors) of a released-size checkpoint in the authors' layout."""

    def t(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    hidden = 4096 if glu else 4 * dim
    sd = {
        "cls_token": t(1, 1, dim),
        "mask_token": t(1, dim),
        "pos_embed": t(1, 1370, dim),
        "patch_embed.proj.weight": t(dim, 3, 14, 14),
        "patch_embed.proj.bias": t(dim),
    }
    if registers:
        sd["register_tokens"] = t(1, registers, dim)
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "ls1.gamma": t(dim), p + "attn.qkv.weight": t(3 * dim, dim)})
        if glu:
            sd.update(
                {p + "mlp.w12.weight": t(2 * hidden, dim), p + "mlp.w3.weight": t(dim, hidden)}
            )
        else:
            sd.update({p + "mlp.fc1.weight": t(hidden, dim), p + "mlp.fc2.weight": t(dim, hidden)})
    return sd


@pytest.mark.parametrize(
    "dim,depth,heads,name,glu",
    [
        (384, 12, 6, "vit_small", False),
        (768, 12, 12, "vit_base", False),
        (1024, 24, 16, "vit_large", False),
        (1536, 40, 24, "vit_giant2", True),
    ],
)
@pytest.mark.parametrize("registers", [0, 4])
def test_architecture_inference_for_the_released_sizes(dim, depth, heads, name, glu, registers):
    arch = infer_dinov2_arch(_meta_authors_state(dim, depth, registers, glu))
    assert (
        arch.name,
        arch.embed_dim,
        arch.depth,
        arch.num_heads,
        arch.registers,
        arch.glu,
        arch.pos_grid,
    ) == (name, dim, depth, heads, registers, glu, 37)
    if glu:  # giant: SwiGLU hidden 4096, packed as timm's fc1 (8192 x 1536) and fc2 (1536 x 4096)
        with torch.device("meta"):
            model = build_dinov2(arch)
        assert model.blocks[0].mlp.fc1.weight.shape == (8192, 1536)
        assert model.blocks[0].mlp.fc2.weight.shape == (1536, 4096)


def test_authors_keys_go_through_timms_converter():
    sd = authors_state(64, 1, 4, glu=True, seed=6, hidden=96)
    arch = infer_dinov2_arch(sd)
    converted = to_timm_layout(sd, arch)
    assert "mask_token" not in converted and "register_tokens" not in converted
    torch.testing.assert_close(converted["cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert converted["pos_embed"].shape == (1, 37 * 37, 64)
    assert converted["blocks.0.mlp.fc1.weight"] is sd["blocks.0.mlp.w12.weight"]
    assert set(converted) == set(build_dinov2(arch).state_dict())


def test_transformers_mapping_is_the_inverse_of_the_hand_written_layout():
    sd = authors_state(64, 2, 4, seed=7)
    mapped = hf_to_authors(hf_state(sd, "dinov2_with_registers."), "dinov2_with_registers.")
    assert set(mapped) == set(sd)
    for key, value in sd.items():
        torch.testing.assert_close(mapped[key], value, rtol=0, atol=0)
    with pytest.raises(
        ValueError, match="unexpected transformers key 'encoder.layer.0.extra.weight'"
    ):
        hf_to_authors({**hf_state(sd), "encoder.layer.0.extra.weight": torch.zeros(1)})


def test_unsupported_and_broken_files_say_why(tmp_path):
    sd = authors_state(64, 1, 0, seed=8)
    torch.save(sd, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_backbone(tmp_path / "truncated.pth")
    bad = dict(sd, pos_embed=torch.zeros(1, 1 + 37 * 36, 64))  # not a square grid
    torch.save(bad, tmp_path / "bad_grid.pth")
    with pytest.raises(CheckpointError, match="not a square grid.*supported: DINOv2 ViT-S/B/L/g"):
        read_backbone(tmp_path / "bad_grid.pth")
    folder = write_hf_folder(tmp_path / "wrong_heads", sd, 3)  # 64 is not divisible by 3 heads
    with pytest.raises(CheckpointError, match="num_attention_heads=3"):
        read_backbone(folder)
    (folder / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(CheckpointError, match="'vit'.*supported: dinov2, dinov2_with_registers"):
        read_backbone(folder)


def test_dinov2_arch_names_and_dino_is_untouched():
    assert Dinov2Arch(1024, 24, 16, 4, 4096, False, 37).name == "vit_large"
    model = build_vit("vit_small", 16)
    assert model.reg_token is None and model.num_prefix_tokens == 1
    assert not any(k.endswith(".gamma") for k in model.state_dict())
    img = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        row = our_cls_row(model, img)
    assert row.shape == (6, 1 + 4 * 5) and math.isclose(
        float(row.sum(-1).mean()), 1.0, rel_tol=1e-5
    )
