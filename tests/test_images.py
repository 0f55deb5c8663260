"""The one image-file module (trainer/data/images.py): suffixes, folder scanner, RGB loader."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.images import IMAGE_SUFFIXES, is_image_file, list_images, load_rgb

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 90).save(path, format="JPEG")
    return path


def test_list_images_flat_or_recursive_sorted_visible_and_any_case(tmp_path):
    _jpeg(tmp_path / "b.jpg")
    _jpeg(tmp_path / "A.JPEG")
    _jpeg(tmp_path / ".hidden.jpg")
    _jpeg(tmp_path / "sub" / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["A.JPEG", "b.jpg"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "A.JPEG",
        "b.jpg",
        "sub/c.jpg",
    ]
    assert [p.name for p in list_images(tmp_path, suffixes=(".jpeg",))] == ["A.JPEG"]
    assert not is_image_file(tmp_path / "notes.txt") and not is_image_file(tmp_path / "folder.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_load_rgb_converts_any_mode_and_reads_file_objects(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 7), 42).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (5, 7) and image.getpixel((0, 0)) == (42, 42, 42)
    assert load_rgb(io.BytesIO(path.read_bytes())).getpixel((4, 6)) == (42, 42, 42)
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "missing.png")


def test_load_rgb_drafts_large_jpegs_only_down_to_the_requested_side(tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (400, 640, 3), dtype=np.uint8)).save(big)
    assert load_rgb(big).size == (640, 400)
    assert load_rgb(big, draft_size=100).size == (160, 100)  # 1/4: both sides still >= 100
    assert load_rgb(big, draft_size=150).size == (320, 200)  # 1/4 would give 100 < 150
    assert load_rgb(big, draft_size=400).size == (640, 400)
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    assert load_rgb(png, draft_size=100).size == (640, 400)  # only JPEG decoders can draft


def _string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_one_list_of_image_suffixes_in_trainer_and_benchmarks():
    """Only trainer/data/images.py spells out image suffixes; every other module imports them."""
    owners = []
    for folder in ("trainer", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if {".jpeg", ".webp"} <= _string_constants(path):
                owners.append(path.relative_to(ROOT).as_posix())
    assert owners == ["trainer/data/images.py"]
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"} <= set(IMAGE_SUFFIXES)
