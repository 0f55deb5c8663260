"""Attention-mask Jaccard evaluation: designed-stub answers, a reference check, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference_vit import ref_forward
from trainer.data.images import IMAGE_SUFFIXES
from trainer.eval.seg import evaluate_folder, image_head_ious, main, pair_images_and_masks
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD, build_vit

IN, OUT = 0.08, 0.045  # 8 patches x 0.08 = 0.64 of the mass inside, 8 x 0.045 = 0.36 outside
FG, BG = 128, 127  # the ground truth is foreground from 128 on


class StubModel:
    """Patch 16; the attention ignores the image. On a 4x4 grid (64 px):

    head 0: mass on the left two columns, head 1: all mass on patch (0, 0), head 2: mass on the
    top two rows. With threshold 0.6 the 0.045 patches are dropped (cumsum 0.36 <= 0.4) and the
    0.08 ones kept (0.44 > 0.4), so the masks are exactly those regions.
    """

    patch_size = 16

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def get_cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().cpu().clone())
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        assert (gh, gw) == (4, 4), "the stub is designed for a 4x4 grid"
        attn = torch.full((3, gh, gw), OUT)
        attn[0, :, : gw // 2] = IN
        attn[1] = 0.0
        attn[1, 0, 0] = 1.0
        attn[2, : gh // 2, :] = IN
        return attn.unsqueeze(0).to(x.device)


# ground truths, in 64x64 pixels, and each head's IoU with them (worked out by hand)
EXPECTED = {
    "left": [1.0, 256 / 2048, 1024 / 3072],  # left half; head 2 overlaps one quarter of the image
    "patch": [256 / 2048, 1.0, 256 / 2048],  # the top-left 16x16 patch
    "right": [0.0, 0.0, 1024 / 3072],  # right half
}


def gt_image(kind: str, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A gray mask of ``size`` (W, H) whose resize to 64x64 (nearest) is the ``kind`` region."""
    w, h = size
    arr = np.full((h, w), BG, dtype=np.uint8)
    if kind == "left":
        arr[:, : w // 2] = FG
    elif kind == "right":
        arr[:, w // 2 :] = FG
    elif kind == "patch":
        arr[: h // 4, : w // 4] = FG
    return Image.fromarray(arr, mode="L")


def noise_image(size: tuple[int, int] = (96, 80), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_dataset(root: Path, kinds: dict[str, str], suffix: str = ".jpg") -> tuple[Path, Path]:
    """``kinds`` maps an id to a ground-truth kind; images are noise."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i, (stem, kind) in enumerate(kinds.items()):
        noise_image(seed=i).save(images / f"{stem}{suffix}")
        gt_image(kind).save(masks / f"{stem}.png")
    return images, masks


# -- one image -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_head_ious_known_answers(kind: str) -> None:
    ious = image_head_ious(StubModel(), noise_image(), gt_image(kind), image_size=64, threshold=0.6)
    assert ious.shape == (3,)
    assert ious.tolist() == pytest.approx(EXPECTED[kind], abs=1e-6)


def test_gt_is_cropped_to_the_patch_grid() -> None:
    # 70 px: a 4x4 grid covers 64x64 px; the left half of the 70 px ground truth is 35 columns
    ious = image_head_ious(StubModel(), noise_image(), gt_image("left", (70, 70)), image_size=70)
    assert float(ious[0]) == pytest.approx(32 / 35)
    assert float(ious[1]) == pytest.approx(256 / (35 * 64))


def test_input_is_resized_and_normalised() -> None:
    stub = StubModel()
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.2, 0.4)
    image = Image.new("RGB", (50, 30), (255, 51, 0))
    image_head_ious(stub, image, gt_image("left"), image_size=64, mean=mean, std=std)
    x = stub.inputs[0]
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    want = [(255 / 255 - 0.5) / 0.5, (51 / 255 - 0.25) / 0.2, (0 - 0.1) / 0.4]
    assert x[0].mean(dim=(1, 2)).tolist() == pytest.approx(want, abs=1e-5)
    assert float((x[0] - torch.tensor(want)[:, None, None]).abs().max()) < 1e-5


def test_image_smaller_than_a_patch_is_an_error() -> None:
    with pytest.raises(ValueError, match="patch size"):
        image_head_ious(StubModel(), noise_image(), gt_image("left"), image_size=8)


# -- folders ---------------------------------------------------------------------------------------
def test_evaluate_folder_known_answers(tmp_path: Path) -> None:
    images, masks = make_dataset(
        tmp_path, {"a_left": "left", "b_patch": "patch", "c_right": "right"}
    )
    noise_image(seed=9).save(images / "d_nomask.jpg")  # no mask: skipped
    (images / "e_corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # unreadable: skipped
    gt_image("left").save(masks / "e_corrupt.png")
    gt_image("left").save(masks / "f_orphan.png")  # a mask without an image is ignored
    res = evaluate_folder(StubModel(), images, masks, image_size=64, threshold=0.6)
    table = np.array([EXPECTED["left"], EXPECTED["patch"], EXPECTED["right"]])
    assert res["images"] == 3 and res["skipped"] == 2
    assert res["missing_masks"] == 1 and res["unreadable"] == 1
    assert res["jaccard"] == pytest.approx(100 * (1 + 1 + 1 / 3) / 3, abs=1e-4)
    assert res["per_head_jaccard"] == pytest.approx(list(100 * table.mean(axis=0)), abs=1e-4)
    assert res["best_head_counts"] == [1, 1, 1]
    assert res["image_size"] == 64 and res["threshold"] == 0.6
    assert res["seconds"] >= 0 and res["ms_per_image"] == pytest.approx(1000 * res["seconds"] / 3)
    json.dumps(res)  # plain Python types only


def test_best_head_counts_and_limit(tmp_path: Path) -> None:
    images, masks = make_dataset(tmp_path, {"a": "left", "b": "left", "c": "patch", "d": "right"})
    res = evaluate_folder(StubModel(), images, masks, image_size=64)
    assert res["best_head_counts"] == [2, 1, 1]
    assert res["jaccard"] == pytest.approx(100 * (3 + 1 / 3) / 4, abs=1e-4)
    res = evaluate_folder(StubModel(), images, masks, image_size=64, limit=2)
    assert (
        res["images"] == 2
        and res["best_head_counts"] == [2, 0, 0]
        and res["jaccard"] == pytest.approx(100)
    )


def test_pairing_by_stem(tmp_path: Path) -> None:
    images, masks = make_dataset(tmp_path, {"b": "left", "a": "left"})
    noise_image().save(images / "c.PNG")  # any image suffix, any case
    gt_image("left").save(masks / "c.png")
    noise_image().save(images / "0_nomask.bmp")
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden.jpg").write_bytes(b"")
    pairs, missing = pair_images_and_masks(images, masks)
    assert [(i.name, m.name) for i, m in pairs] == [
        ("a.jpg", "a.png"),
        ("b.jpg", "b.png"),
        ("c.PNG", "c.png"),
    ]
    assert missing == 1
    pairs, missing = pair_images_and_masks(images, masks, limit=1)
    assert [i.name for i, _ in pairs] == ["a.jpg"] and missing == 1


def test_no_pairs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError) as err:
        evaluate_folder(StubModel(), tmp_path / "images", tmp_path / "masks", image_size=64)
    msg = str(err.value)
    assert str(tmp_path / "images") in msg and str(tmp_path / "masks") in msg
    assert all(s in msg for s in IMAGE_SUFFIXES) and ".png" in msg
    noise_image().save(tmp_path / "images" / "x.jpg")  # an image, but no mask
    with pytest.raises(ValueError, match="1 image"):
        evaluate_folder(StubModel(), tmp_path / "images", tmp_path / "masks", image_size=64)
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_folder(StubModel(), tmp_path / "nope", tmp_path / "masks", image_size=64)


# -- against an independent computation ------------------------------------------------------------
def reference_head_ious(
    sd: dict, heads: int, patch: int, image: Image.Image, gt: Image.Image, size: int, t: float
) -> np.ndarray:
    """The protocol from its equations, with the tests' own ViT and no project mask/IoU code."""
    rgb = (
        np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float64)
        / 255.0
    )
    x = (rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    x = torch.from_numpy(x.transpose(2, 0, 1)[None]).float()
    g = size // patch
    with torch.no_grad():
        _, attn = ref_forward(sd, x[..., : g * patch, : g * patch], heads)
    cls = attn[0, :, 0, 1:].double().numpy()  # heads, N
    gt_px = np.asarray(gt.convert("L").resize((size, size), Image.NEAREST)) >= 128
    gt_px = gt_px[: g * patch, : g * patch]
    out = []
    for a in cls:
        order = np.argsort(a, kind="stable")
        cum = np.cumsum(a[order] / a.sum())
        keep = np.zeros(a.size, dtype=bool)
        keep[order] = cum > 1 - t
        mask = np.kron(keep.reshape(g, g), np.ones((patch, patch), dtype=bool)).astype(bool)
        out.append((mask & gt_px).sum() / (mask | gt_px).sum())
    return np.array(out)


def test_matches_an_independent_reference(tmp_path: Path, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 16)
    model.train()  # evaluate_folder must switch to eval and back
    kinds = {"p0": "left", "p1": "patch"}
    images, masks = make_dataset(tmp_path, kinds)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    best = []
    for stem in kinds:
        with Image.open(images / f"{stem}.jpg") as im, Image.open(masks / f"{stem}.png") as gt:
            ref = reference_head_ious(sd, model.num_heads, 16, im, gt, 80, 0.6)
            got = image_head_ious(model.eval(), im, gt, image_size=80, threshold=0.6)
        assert got.tolist() == pytest.approx(ref.tolist(), abs=1e-6)
        assert not math.isclose(float(ref.max()), 1.0)  # not a degenerate case
        best.append(ref.max())
    model.train()
    res = evaluate_folder(model, images, masks, image_size=80, threshold=0.6)
    assert model.training
    assert res["images"] == 2 and len(res["per_head_jaccard"]) == model.num_heads == 3
    assert res["jaccard"] == pytest.approx(100 * float(np.mean(best)), abs=1e-4)


# -- command line ----------------------------------------------------------------------------------
def test_cli_random_init_writes_json(tmp_path: Path, capsys, one_torch_thread) -> None:
    images, masks = make_dataset(tmp_path / "data", {"a": "left", "b": "right"})
    out = tmp_path / "out" / "res.json"
    res = main(
        [
            "--random_init",
            "--arch",
            "vit_tiny",
            "--patch_size",
            "16",
            "--seed",
            "1",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--image_size",
            "32",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved == res  # JSON round-trips floats exactly
    assert saved["images"] == 2 and saved["skipped"] == 0 and len(saved["per_head_jaccard"]) == 3
    assert "vit_tiny/16" in saved["model"] and saved["image_size"] == 32
    text = capsys.readouterr().out
    assert "jaccard (best head, mean over images):" in text and "jaccard per head" in text


def test_cli_checkpoint(tmp_path: Path, capsys, one_torch_thread) -> None:
    images, masks = make_dataset(tmp_path / "data", {"a": "left", "b": "patch", "c": "right"})
    model = build_vit(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    export_backbone_safetensors(model, tmp_path / "b.safetensors", "vit_d48", epoch=3)
    res = main(
        [
            "--checkpoint",
            str(tmp_path / "b.safetensors"),
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--image_size",
            "32",
            "--limit",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert (
        res["images"] == 2
        and len(res["per_head_jaccard"]) == 4
        and sum(res["best_head_counts"]) == 2
    )
    assert "epoch 3" in res["model"] and 0.0 <= res["jaccard"] <= 100.0


@pytest.mark.parametrize(
    "argv, expect",
    [
        ([], "one of the arguments --checkpoint --random_init is required"),
        (["--random_init", "--checkpoint", "x.pth"], "not allowed with"),
        (["--random_init", "--arch", "vit_huge"], "vit_tiny"),
        (["--checkpoint", "x.pth", "--arch", "vit_tiny"], "only apply with --random_init"),
        (["--random_init", "--threshold", "0"], "(0, 1]"),
        (["--random_init", "--device", "tpu"], "auto"),
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], expect: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--images", "i", "--masks", "m"])
    assert exc.value.code == 2
    assert expect in capsys.readouterr().err


def _seg_cli(tmp_path: Path, *extra: str) -> dict:
    images, masks = make_dataset(tmp_path / "data", {"a": "left", "b": "right"})
    return main(
        [
            "--random_init",
            "--arch",
            "vit_tiny",
            "--patch_size",
            "16",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--image_size",
            "32",
            "--device",
            "cpu",
            *extra,
        ]
    )


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_a_native_precision_gives_the_fp32_jaccard_closely(tmp_path: Path, mode: str) -> None:
    import torch

    from trainer.model.inference_precision import native_precisions

    if mode not in native_precisions(torch.device("cpu")):
        pytest.skip(f"{mode} does not run natively on this CPU")
    fp32 = _seg_cli(tmp_path / "a")
    other = _seg_cli(tmp_path / "b", "--precision", mode)
    assert other["images"] == fp32["images"] == 2
    assert abs(other["jaccard"] - fp32["jaccard"]) < 5.0  # two images, a 2x2 grid: coarse


def test_an_emulated_precision_is_refused_with_the_modes_that_run(tmp_path, monkeypatch):
    import trainer.model.inference_precision as ip

    monkeypatch.setattr(ip, "cpu_flags", lambda: frozenset())
    with pytest.raises(SystemExit, match="this machine runs fp32"):
        _seg_cli(tmp_path, "--precision", "bf16")
