"""Linear probe: features against an independent reference ViT, a tiny end-to-end run, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference_vit import _block, _layer_norm, ref_pos_embed
from trainer.eval import linear
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit


def ref_intermediate_cls(sd: dict, img: torch.Tensor, heads: int, n: int) -> torch.Tensor:
    """torch.cat([x[:, 0] for x in get_intermediate_layers(img, n)]) written from scratch."""
    w = sd["patch_embed.proj.weight"]
    x = torch.nn.functional.conv2d(img, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + ref_pos_embed(sd["pos_embed"], gh, gw)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    outs = []
    for i in range(depth):
        x, _ = _block(x, sd, i, heads)
        if i >= depth - n:
            outs.append(_layer_norm(x, sd, "norm"))
    return torch.cat([o[:, 0] for o in outs], dim=-1)


def tiny_model():
    torch.manual_seed(0)
    return build_vit(embed_dim=48, depth=3, num_heads=3, patch_size=4).eval()


def test_features_match_reference_intermediate_layers():
    model = tiny_model()
    img = torch.randn(2, 3, 16, 20)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ours = linear.probe_features(model, img, 2, avgpool=False)
        ref = ref_intermediate_cls(sd, img, 3, 2)
        pooled = linear.probe_features(model, img, 1, avgpool=True)
        last = model.get_intermediate_layers(img, 1)[0]
    assert ours.shape == (2, 96)
    assert torch.allclose(ours, ref, atol=1e-4)
    assert torch.allclose(pooled, torch.cat([last[:, 0], last[:, 1:].mean(1)], dim=1), atol=1e-6)


def test_classifier_init():
    clf = linear.LinearClassifier(2000, 300)
    assert torch.all(clf.linear.bias == 0)
    assert clf.linear.weight.std().item() == pytest.approx(0.01, rel=0.05)


def make_folder(root, counts, seed=0):
    rng = np.random.default_rng(seed)
    colours = {"blue": (20, 40, 220), "red": (220, 30, 20)}
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(colours[name]) + rng.integers(-20, 20, (20, 20, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i}.jpg")


@pytest.fixture()
def data(tmp_path):
    make_folder(tmp_path / "d" / "train", {"blue": 4, "red": 4})
    make_folder(tmp_path / "d" / "val", {"blue": 2, "red": 3}, seed=1)
    ckpt = tmp_path / "b.safetensors"
    export_backbone_safetensors(tiny_model(), ckpt, "vit_d48", epoch=1)
    return tmp_path, ckpt


def cli(tmp_path, ckpt, *extra):
    return linear.main(
        ["--pretrained_weights", str(ckpt), "--data_path", str(tmp_path / "d"),
         "--output_dir", str(tmp_path / "out"), "--resize", "16", "--crop", "16",
         "--n_last_blocks", "2", "--batch_size_per_gpu", "4", "--num_workers", "0",
         "--device", "cpu", "--lr", "20", *extra]
    )  # fmt: skip


def test_end_to_end_cached(data, capsys):
    torch.set_num_threads(1)
    tmp_path, ckpt = data
    res = cli(tmp_path, ckpt, "--epochs", "5", "--cache_features", "--save_features")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["top1"] == res["top1"] and 0 <= saved["top1"] <= 100
    assert saved["top5"] == 100.0  # two classes
    assert saved["flags"]["n_last_blocks"] == 2 and "cached" in saved["protocol"]
    npz = np.load(tmp_path / "out" / "features_val.npz")
    assert npz["features"].shape == (5, 96)
    assert npz["labels"].tolist() == [0, 0, 1, 1, 1]  # ImageFolder order
    best = torch.load(tmp_path / "out" / "linear_best.pth", weights_only=True)
    assert (tmp_path / "out" / "linear_last.pth").exists()
    again = cli(tmp_path, ckpt, "--evaluate")
    assert again["top1"] == pytest.approx(best["top1"])
    assert "Linear probe: Top1" in capsys.readouterr().out


def test_end_to_end_augmented(data):
    torch.set_num_threads(1)
    tmp_path, ckpt = data
    res = cli(tmp_path, ckpt, "--epochs", "1", "--avgpool_patchtokens", "true")
    assert res["protocol"] == "paper" and res["epoch"] == 1


def test_empty_class_folder_is_a_clear_error(data):
    tmp_path, ckpt = data
    (tmp_path / "d" / "train" / "green").mkdir()
    with pytest.raises(linear.LinearEvalError, match="green has no images"):
        cli(tmp_path, ckpt, "--epochs", "1")
    assert not (tmp_path / "out").exists()


def test_help_says_cache_is_not_the_paper_protocol(capsys):
    with pytest.raises(SystemExit):
        linear.build_parser().parse_args(["--help"])
    assert "NOT the paper's protocol" in " ".join(capsys.readouterr().out.split())


def test_runner_keeps_order_skips_empty_batches_and_checks_precision():
    from trainer.eval.runner import autocast, collect

    model = torch.nn.Linear(3, 2)
    batches = [(torch.ones(2, 3) * i, torch.tensor([i, i])) for i in range(3)]
    batches.insert(1, (torch.empty(0, 3), torch.empty(0, dtype=torch.long)))
    out, labels = collect(model, batches, lambda m, x: m(x), torch.device("cpu"))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(out, model(torch.cat([b[0] for b in batches])).detach())
    assert model.training  # the runner restores the mode it found
    with pytest.raises(ValueError, match="choose one of fp32, bf16, fp16"):
        autocast(torch.device("cpu"), "fp8")


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_a_native_precision_gives_the_fp32_features_closely(data, mode):
    from trainer.model.inference_precision import native_precisions

    if mode not in native_precisions(torch.device("cpu")):
        pytest.skip(f"{mode} does not run natively on this CPU")
    torch.set_num_threads(1)
    tmp_path, ckpt = data
    cli(tmp_path, ckpt, "--epochs", "1", "--cache_features", "--save_features")
    fp32 = np.load(tmp_path / "out" / "features_val.npz")["features"]
    res = cli(tmp_path, ckpt, "--epochs", "1", "--cache_features", "--save_features",
              "--precision", mode)  # fmt: skip
    other = np.load(tmp_path / "out" / "features_val.npz")["features"]
    assert res["flags"]["precision"] == mode and other.shape == fp32.shape
    assert np.abs(other - fp32).max() < 0.15 * np.abs(fp32).max()  # bf16 / int8 tolerance


def test_an_emulated_precision_is_refused(data, monkeypatch):
    import trainer.model.inference_precision as ip

    monkeypatch.setattr(ip, "cpu_flags", lambda: frozenset())
    tmp_path, ckpt = data
    with pytest.raises(SystemExit, match="this machine runs fp32"):
        cli(tmp_path, ckpt, "--epochs", "1", "--precision", "int8")
    assert cli(tmp_path, ckpt, "--epochs", "1", "--precision", "auto")["flags"]["precision"] == (
        "fp32"
    )
