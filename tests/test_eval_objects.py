"""CorLoc and box IoU on hand-made masks and boxes; the objects command end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from trainer.eval import objects
from trainer.eval.objects import box_iou, evaluate_folder, main, mask_boxes, score_box


def test_box_iou_by_hand() -> None:
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 4, 4], [4, 4, 8, 8]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def two_blob_mask() -> np.ndarray:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:6, 3:9] = True  # blob 1: x 3..9, y 2..6
    mask[6, 9] = True  # touches blob 1 only diagonally: joins it (8-connectivity)
    mask[10:18, 15:27] = True  # blob 2
    return mask


def test_mask_boxes_are_the_8_connected_components() -> None:
    assert sorted(mask_boxes(two_blob_mask())) == [[3, 2, 10, 7], [15, 10, 27, 18]]
    assert mask_boxes(np.zeros((4, 4), dtype=bool)) == []


def test_corloc_hit_needs_half_iou_with_one_component() -> None:
    mask = two_blob_mask()
    hit = score_box([15, 10, 27, 16], mask)  # 12x6 inside the 12x8 blob: IoU 0.75
    assert hit["corloc"] and hit["iou"] == pytest.approx(0.75)
    assert hit["gt_boxes"] == 2
    assert hit["foreground_iou"] == pytest.approx(72 / (24 * 16))
    miss = score_box([0, 0, 30, 20], mask)  # the whole image: IoU 96/600 with blob 2
    assert not miss["corloc"] and miss["iou"] == pytest.approx(96 / 600)
    empty = score_box([0, 0, 5, 5], np.zeros((20, 30), dtype=bool))
    assert empty == {"corloc": False, "iou": 0.0, "foreground_iou": 0.0, "gt_boxes": 0}


def write_pairs(root: Path, boxes: dict[str, tuple[int, int, int, int]]) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for stem, (x0, y0, x1, y1) in boxes.items():
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            images / f"{stem}.jpg"
        )
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(mask).save(masks / f"{stem}.png")
    return images, masks


def test_evaluate_folder_scores_the_boxes_in_image_pixels(tmp_path: Path, monkeypatch) -> None:
    """A stub LOST box of ``[8, 8, 24, 24]`` at a 32 px square input is ``[16, 12, 48, 36]``."""
    images, masks = write_pairs(
        tmp_path, {"a": (16, 12, 48, 36), "b": (18, 12, 48, 36), "c": (0, 0, 10, 10)}
    )
    monkeypatch.setattr(objects, "lost", lambda *_a: SimpleNamespace(box=[8.0, 8.0, 24.0, 24.0]))
    model = SimpleNamespace(
        patch_size=16, training=False, train=lambda _mode: None, eval=lambda: None
    )
    results = evaluate_folder(model, images, masks, image_size=32)
    assert results["images"] == 3
    assert [s["box"] for s in results["per_image"]] == [[16.0, 12.0, 48.0, 36.0]] * 3
    ious = [1.0, 30 / 32, 0.0]
    assert results["corloc"] == pytest.approx(100 * 2 / 3)
    assert results["mean_box_iou"] == pytest.approx(100 * sum(ious) / 3)


def test_command_on_a_random_tiny_vit(tmp_path: Path, capsys) -> None:
    images, masks = write_pairs(tmp_path, {"a": (16, 12, 48, 36), "b": (0, 0, 20, 20)})
    (images / "nomask.jpg").write_bytes((images / "a.jpg").read_bytes())
    out = tmp_path / "res" / "objects.json"
    argv = ["--random_init", "--arch", "vit_tiny", "--images", str(images), "--masks", str(masks)]
    results = main([*argv, "--device", "cpu", "--json", str(out)])
    assert results["images"] == 2 and results["missing_masks"] == 1
    assert 0.0 <= results["corloc"] <= 100.0
    assert json.loads(out.read_text())["corloc"] == results["corloc"]
    assert "CorLoc" in capsys.readouterr().out
    for box in (s["box"] for s in results["per_image"]):
        assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 48
    cut = main([*argv, "--method", "tokencut", "--image_size", "32"])
    assert cut["method"] == "tokencut" and cut["images"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k_patches", "0"], "--k_patches must be positive"),
        (["--image_size", "8"], "smaller than the patch size"),
        (["--which", "student"], "--which only applies with --checkpoint"),
        (["--method", "found"], "invalid choice: 'found'"),
    ],
)
def test_bad_flags_are_errors(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    images, masks = write_pairs(tmp_path, {"a": (0, 0, 8, 8)})
    argv = ["--random_init", "--arch", "vit_tiny", "--images", str(images), "--masks", str(masks)]
    with pytest.raises(SystemExit):
        main([*argv, *extra])
    assert message in capsys.readouterr().err


def test_no_pairs_is_a_clear_error(tmp_path: Path) -> None:
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    with pytest.raises(ValueError, match="no readable image/mask pair"):
        evaluate_folder(SimpleNamespace(), images, masks)
