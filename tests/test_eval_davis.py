"""DAVIS label propagation and its J / F metrics against independent, loop-based references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.eval import davis
from trainer.eval.davis_metrics import boundary_f, region_iou, statistics
from trainer.eval.label_propagation import neighbourhood_mask, propagate
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit

PALETTE = [0, 0, 0, 200, 0, 0, 0, 200, 0] + [7] * (256 * 3 - 9)


def make_clip(root, name, n_frames=5, size=(64, 64), seed=0, objects=2):
    """A textured clip with squares moving right, and indexed annotations for every frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 80, size=(h, w, 3)).astype(np.uint8)
    for t in range(n_frames):
        img, lab = base.copy(), np.zeros((h, w), np.uint8)
        for obj in range(1, objects + 1):
            y, x = 8 + 24 * (obj - 1), 4 + 3 * t
            img[y : y + 16, x : x + 16] = (255 * (obj % 2), 180, 60 * obj)
            lab[y : y + 16, x : x + 16] = obj
        Image.fromarray(img).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg")
        ann = Image.fromarray(lab, mode="P")
        ann.putpalette(PALETTE)
        ann.save(root / "Annotations" / "480p" / name / f"{t:05d}.png")


def tiny_model(patch=8):
    torch.manual_seed(0)
    return build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=patch).eval()


# -- the authors' equations, written out with loops ---------------------------------------
def loop_step(tar, srcs, labs, grid, r, k, temp):
    """For every target patch: exp(cos/T) to every source patch of every context frame inside
    the window (0 outside), keep the k largest (ties kept), normalise, average the labels."""
    h, w = grid
    out = torch.zeros(tar.shape[0], labs.shape[-1], dtype=torch.float64)
    for i in range(h * w):
        aff = []
        for m in range(srcs.shape[0]):
            for j in range(h * w):
                inside = abs(i // w - j // w) <= r and abs(i % w - j % w) <= r
                cos = float(tar[i] @ srcs[m, j]) / (tar[i].norm() * srcs[m, j].norm())
                aff.append((math.exp(cos / temp) if inside else 0.0, m, j))
        kth = sorted(a for a, _, _ in aff)[-k]
        kept = [(a, m, j) for a, m, j in aff if a >= kth]
        total = sum(a for a, _, _ in kept)
        for a, m, j in kept:
            out[i] += a / total * labs[m, j].double()
    return out


def loop_labels(soft, patch, frame_hw):
    up = F.interpolate(soft[None].float(), scale_factor=patch, mode="bilinear")[0]
    for c in range(up.shape[0]):
        if up[c].max() > 0:
            up[c] = (up[c] - up[c].min()) / (up[c].max() - up[c].min())
    lab = up.argmax(dim=0).numpy().astype(np.uint8)
    return np.asarray(Image.fromarray(lab).resize(frame_hw[::-1], Image.NEAREST))


def test_window_mask_matches_nested_loops():
    h, w, r = 4, 6, 1
    ref = torch.zeros(h, w, h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            for y in range(max(0, i - r), min(h, i + r + 1)):
                for x in range(max(0, j - r), min(w, j + r + 1)):
                    ref[i, j, y, x] = True
    assert torch.equal(neighbourhood_mask(h, w, r, "cpu"), ref.reshape(h * w, h * w))


def test_propagate_matches_loop_reference():
    torch.manual_seed(1)
    grid, m, d, c = (4, 5), 3, 8, 3
    n = grid[0] * grid[1]
    tar = F.normalize(torch.randn(n, d), dim=1)
    srcs = F.normalize(torch.randn(m, n, d), dim=2)
    labs = torch.rand(m, n, c)
    ours = propagate(tar, srcs, labs, neighbourhood_mask(*grid, 1, "cpu"), topk=4, chunk=7)
    ref = loop_step(tar, srcs, labs, grid, 1, 4, 0.1)
    assert torch.allclose(ours.double(), ref, atol=1e-5)


def authors_clip(model, seq, n_last, r, k, short_side):
    """The whole propagation on a clip with the loop step: first frame + n_last predictions."""
    size = davis.network_size(*seq.size, short_side)
    grid = (size[0] // model.patch_size, size[1] // model.patch_size)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.228, 0.224, 0.225])

    def feat(path):
        x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255)
        x = F.interpolate(x.permute(2, 0, 1)[None], size=size, mode="bilinear")
        x = (x - mean[:, None, None]) / std[:, None, None]
        with torch.no_grad():
            return torch.cat([t[:, 1:] for t in model.get_intermediate_layers(x, 1)])[0]

    small = np.asarray(Image.open(seq.first_annotation).resize(grid[::-1], Image.NEAREST))
    first = F.one_hot(torch.from_numpy(small.astype(np.int64)).flatten()).double()
    ctx, preds, f0 = [], [], feat(seq.frames[0])
    for path in seq.frames[1:]:
        tar = feat(path)
        srcs = torch.stack([f0] + [f for f, _ in ctx])
        labs = torch.stack([first] + [s for _, s in ctx])
        soft = loop_step(tar, srcs, labs, grid, r, k, 0.1)
        ctx = (ctx + [(tar, soft)])[-n_last:]
        preds.append(loop_labels(soft.T.reshape(-1, *grid), model.patch_size, seq.size))
    return np.stack(preds)


@pytest.mark.parametrize("patch", [8, 16])
def test_clip_matches_loop_reference(tmp_path, patch):
    torch.set_num_threads(1)
    make_clip(tmp_path, "clip", n_frames=5, size=(48, 80))
    seq = davis.load_sequence(tmp_path, "clip")
    model = tiny_model(patch)
    settings = davis.PropagationSettings(
        n_last_frames=2, size_mask_neighborhood=2, topk=3, short_side=64
    )
    ours = davis.segment_sequence(model, seq, tmp_path / "out", torch.device("cpu"), settings, 2)
    ref = authors_clip(model, seq, 2, 2, 3, 64)
    assert ours.shape == (5, 48, 80)
    assert (ours[1:] == ref).mean() >= 0.999
    assert np.array_equal(ours[0], np.asarray(Image.open(seq.first_annotation)))
    png = Image.open(tmp_path / "out" / "00003.png")
    assert png.mode == "P" and png.getpalette()[:9] == PALETTE[:9]


def test_network_size_and_authors_std():
    assert davis.network_size(480, 854) == (480, 832)
    assert davis.network_size(854, 480) == (832, 480)
    assert davis.DAVIS_STD == (0.228, 0.224, 0.225)


def test_j_on_hand_made_masks():
    gt = np.zeros((10, 10), bool)
    gt[:5] = True  # 50 px
    pred = np.zeros((10, 10), bool)
    pred[:, :5] = True  # 50 px, 25 shared
    assert region_iou(gt, pred) == pytest.approx(25 / 75)
    assert region_iou(gt, gt) == 1.0
    assert region_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert region_iou(gt, np.zeros_like(gt)) == 0.0


def test_f_on_hand_made_masks():
    # 100 x 100: tolerance ceil(0.008 * 141.4) = 2 px
    gt = np.zeros((100, 100), bool)
    gt[20:40, 20:40] = True
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(gt, np.roll(gt, 2, axis=1)) == 1.0  # within tolerance
    assert boundary_f(gt, np.zeros_like(gt)) == 0.0  # precision 1, recall 0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # shifted 10 px right: of the 80 boundary pixels, 13 + 13 on the rows and 4 on the left
    # column lie within 2 px of the other boundary -> precision = recall = 30 / 80
    assert boundary_f(gt, np.roll(gt, 10, axis=1)) == pytest.approx(30 / 80)


def test_recall_and_decay():
    mean, recall, decay = statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0.4]))
    assert mean == pytest.approx(4.4 / 8)
    assert recall == 0.5
    assert decay == pytest.approx(1 - 0.4 / 3)  # first bin frames 0-2, last bin frames 5-7


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "b.safetensors"
    export_backbone_safetensors(tiny_model(8), path, "vit_d48", epoch=1)
    return path


def run_cli(root, out, ckpt, *extra):
    return davis.main(
        [
            "--checkpoint",
            str(ckpt),
            "--davis",
            str(root),
            "--output_dir",
            str(out),
            "--short_side",
            "64",
            "--size_mask_neighborhood",
            "2",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_cli_end_to_end(tmp_path, checkpoint, capsys):
    torch.set_num_threads(1)
    make_clip(tmp_path / "D", "a", n_frames=4)
    make_clip(tmp_path / "D", "b", n_frames=4, seed=3, objects=1)
    res = run_cli(tmp_path / "D", tmp_path / "out", checkpoint, "--precision", "fp32")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["sequences"]) == {"a", "b"}
    for key in ("J", "F", "JF", "J_recall", "J_decay", "F_recall", "F_decay"):
        assert 0 <= saved["sequences"]["a"][key] <= 1 or key.endswith("decay")
        assert key in saved["mean"]
    assert saved["sequences"]["a"]["n_objects"] == 2
    # the dataset mean is over the 3 objects
    objs = saved["sequences"]["a"]["objects"]["J"] + saved["sequences"]["b"]["objects"]["J"]
    assert saved["mean"]["J"] == pytest.approx(np.mean(objs))
    assert res["mean"]["JF"] == pytest.approx(saved["mean"]["JF"])
    assert sorted(p.name for p in (tmp_path / "out" / "b").iterdir()) == [
        f"{t:05d}.png" for t in range(4)
    ]
    assert "a: 4 frames" in capsys.readouterr().out


def test_missing_annotation_is_a_clear_error(tmp_path, checkpoint):
    make_clip(tmp_path / "D", "a", n_frames=3)
    (tmp_path / "D" / "Annotations" / "480p" / "a" / "00000.png").unlink()
    with pytest.raises(davis.DavisError, match="no annotation for its first frame"):
        run_cli(tmp_path / "D", tmp_path / "out", checkpoint)
    assert not (tmp_path / "out").exists()


def test_annotation_size_mismatch_is_a_clear_error(tmp_path, checkpoint):
    make_clip(tmp_path / "D", "a", n_frames=3)
    path = tmp_path / "D" / "Annotations" / "480p" / "a" / "00001.png"
    Image.open(path).resize((32, 32)).save(path)
    with pytest.raises(davis.DavisError, match="must match their frames"):
        run_cli(tmp_path / "D", tmp_path / "out", checkpoint)
    assert not (tmp_path / "out").exists()


def test_unknown_sequence_and_bad_flags(tmp_path, checkpoint):
    make_clip(tmp_path / "D", "a", n_frames=3)
    with pytest.raises(davis.DavisError, match="unknown sequences"):
        run_cli(tmp_path / "D", tmp_path / "out", checkpoint, "--sequences", "a,zz")
    with pytest.raises(davis.DavisError, match="--topk"):
        run_cli(tmp_path / "D", tmp_path / "out", checkpoint, "--topk", "0")
    with pytest.raises(SystemExit):
        run_cli(tmp_path / "D", tmp_path / "out", checkpoint, "--precision", "fp8")


def test_disk_is_the_skimage_disk():
    from skimage.morphology import disk as sk_disk

    from trainer.eval.davis_metrics import disk

    for r in range(1, 8):
        assert np.array_equal(disk(r), sk_disk(r).astype(bool))


def test_auto_precision_resolves_and_is_recorded(tmp_path, checkpoint, monkeypatch):
    import trainer.model.inference_precision as ip

    torch.set_num_threads(1)
    make_clip(tmp_path / "D", "a", n_frames=3)
    fp32 = run_cli(tmp_path / "D", tmp_path / "o1", checkpoint)
    monkeypatch.setattr(ip, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("no x86 quantisation engine")
    res = run_cli(tmp_path / "D", tmp_path / "o2", checkpoint, "--precision", "auto")
    assert res["settings"]["precision"] == "int8"
    assert abs(res["mean"]["JF"] - fp32["mean"]["JF"]) < 0.2  # a 3-frame, 8x8-grid clip
    with pytest.raises(SystemExit, match="precision bf16 does not run natively"):
        run_cli(tmp_path / "D", tmp_path / "o3", checkpoint, "--precision", "bf16")
