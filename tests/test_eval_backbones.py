"""The evaluations on DINOv2-with-registers and DINOv3 files: shapes, and DINOv3 features
against timm's own Eva forward and its explicit (non-fused) attention."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.dinov2_layouts import authors_state as dinov2_authors_state
from tests.dinov3_layouts import timm_state as dinov3_timm_state
from tests.dinov3_layouts import tiny_arch
from trainer.eval import davis, export, knn, linear, objects, seg
from trainer.eval.backbone import EvaBackbone, load_eval_backbone, patch_tokens
from trainer.model.dinov3 import build_dinov3

DIM = 128  # both tiny models: 2 blocks of 2 heads of 64, 4 registers / storage tokens


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    v2 = root / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(dinov2_authors_state(DIM, 2, registers=4), v2)
    v3 = root / "dinov3_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in dinov3_timm_state(tiny_arch()).items()}, str(v3))
    return {"dinov2": v2, "dinov3": v3}


def _images(folder, n, size=(40, 36), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.jpg")


def _masks(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.zeros((36, 40), np.uint8)
        arr[8:28, 10:30] = 255
        Image.fromarray(arr).save(folder / f"{i}.png")


def test_dinov3_matches_timm_eva(files):
    torch.manual_seed(0)
    model, info = load_eval_backbone(files["dinov3"])
    assert info.family == "dinov3" and isinstance(model, EvaBackbone)
    eva = build_dinov3(tiny_arch())
    eva.load_state_dict(dinov3_timm_state(tiny_arch()))
    eva.eval()
    x = torch.randn(2, 3, 48, 64)
    captured = []
    last = eva.blocks[-1].attn
    last.fused_attn = False  # timm's explicit softmax(q k^T) path, probabilities captured
    hook = last.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        ref_tokens = eva.forward_features(x)
        ours = patch_tokens(model, x)
        cls = model(x)
        attn = model.get_cls_attention(x)
    hook.remove()
    assert ours.shape == (2, 3 * 4, DIM)  # storage tokens excluded
    assert torch.allclose(ours, ref_tokens[:, 5:], atol=1e-5)
    assert torch.allclose(cls, eva(x), atol=1e-5)
    ref_attn = captured[0][:, :, 0, 5:].reshape(2, 2, 3, 4)
    assert attn.shape == (2, 2, 3, 4) and torch.allclose(attn, ref_attn, atol=1e-5)


def test_dinov2_registers_load_as_a_dino_vit(files):
    model, info = load_eval_backbone(files["dinov2"])
    assert info.family == "dinov2" and info.registers == 4 and model.num_prefix_tokens == 5
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        tokens = model.get_intermediate_layers(x, 1)[0]
        assert torch.equal(patch_tokens(model, x), tokens[:, 5:])
    assert patch_tokens(model, x).shape == (1, 3 * 4, DIM)
    assert model.get_cls_attention(x).shape == (1, 2, 3, 4)


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_knn_seg_objects_on_newer_backbones(files, family, tmp_path):
    torch.set_num_threads(1)
    for split, seed in (("train", 0), ("val", 1)):
        for c in ("a", "b"):
            _images(tmp_path / split / c, 2, seed=seed + ord(c))
    ckpt = str(files[family])
    res = knn.main(
        ["--checkpoint", ckpt, "--train_data", str(tmp_path / "train"),
         "--val_data", str(tmp_path / "val"), "--nb_knn", "1", "--resize", "64", "--crop", "56",
         "--num_workers", "0", "--device", "cpu"]
    )  # fmt: skip
    assert 0.0 <= res["k1_top1"] <= 100.0
    _images(tmp_path / "img", 2)
    _masks(tmp_path / "gt", 2)
    common = ["--checkpoint", ckpt, "--images", str(tmp_path / "img"),
              "--masks", str(tmp_path / "gt"), "--device", "cpu"]  # fmt: skip
    jac = seg.main([*common, "--image_size", "56"])
    heads = 2
    assert jac["images"] == 2 and len(jac["per_head_jaccard"]) == heads
    box = objects.main([*common, "--image_size", "64"])
    assert box["images"] == 2


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_linear_davis_export_on_newer_backbones(files, family, tmp_path):
    torch.set_num_threads(1)
    for split in ("train", "val"):
        for c in ("a", "b"):
            _images(tmp_path / "d" / split / c, 2, seed=ord(c))
    ckpt = str(files[family])
    res = linear.main(
        ["--pretrained_weights", ckpt, "--data_path", str(tmp_path / "d"),
         "--output_dir", str(tmp_path / "lin"), "--epochs", "1", "--batch_size_per_gpu", "4",
         "--n_last_blocks", "2", "--cache_features", "--save_features", "--resize", "64",
         "--crop", "56", "--num_workers", "0", "--device", "cpu"]
    )  # fmt: skip
    feats = np.load(tmp_path / "lin" / "features_val.npz")["features"]
    assert feats.shape == (4, 2 * DIM) and 0 <= res["top1"] <= 100
    from tests.test_eval_davis import make_clip

    make_clip(tmp_path / "D", "clip", n_frames=3)
    out = davis.main(
        ["--checkpoint", ckpt, "--davis", str(tmp_path / "D"), "--output_dir",
         str(tmp_path / "dv"), "--short_side", "64", "--device", "cpu"]
    )  # fmt: skip
    assert Image.open(tmp_path / "dv" / "clip" / "00002.png").size == (64, 64)
    assert 0.0 <= out["mean"]["JF"] <= 1.0
    _images(tmp_path / "img", 3)
    index = export.main(
        ["--checkpoint", ckpt, "--images", str(tmp_path / "img"), "--output_dir",
         str(tmp_path / "ex"), "--image_size", "64", "--outputs", "cls,patch,attention,masks",
         "--device", "cpu"]
    )  # fmt: skip
    patch = 14 if family == "dinov2" else 16
    grid = 64 // patch
    with np.load(tmp_path / "ex" / "shard-00000.npz") as shard:
        assert shard["cls"].shape == (3, DIM)
        assert shard["patch"].shape == (3, grid * grid, DIM)
        assert shard["attention"].shape == shard["masks"].shape == (3, 2, grid, grid)
    saved = json.loads((tmp_path / "ex" / "index.json").read_text())
    assert saved["family"] == family and index["grid"] == [grid, grid]
