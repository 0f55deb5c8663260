"""The explorer with DINOv2: size control follows the model, compare view labels registers."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import compare_handlers, model_handlers, model_info

PATCH, GRID = 14, (4, 5)


def _png(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (GRID[1] * PATCH, GRID[0] * PATCH), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def dinov2_reply(model: str, registers: int, seed: int) -> dict:
    """A docs/API.md reply: softmax row over CLS, registers, patches, split as the service does."""
    heads, n = 2, GRID[0] * GRID[1]
    logits = np.random.default_rng(seed).normal(size=(heads, 1 + registers + n))
    row = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    attn = row[:, 1 + registers :].reshape(heads, *GRID)
    return {
        "model": model,
        "arch": "vit_small",
        "patch_size": PATCH,
        "num_heads": heads,
        "trained": True,
        "family": "dinov2",
        "registers": registers,
        "grid": list(GRID),
        "image_size": [GRID[0] * PATCH, GRID[1] * PATCH],
        "params": {"threshold": 0.6},
        "attentions": attn.tolist(),
        "mean_attention": attn.mean(0).tolist(),
        "masks": (attn > attn.mean()).astype(int).tolist(),
        "coverage": [0.5, 0.5],
        "register_attention": row[:, 1 : 1 + registers].tolist() if registers else None,
        "overlays": {
            "image": _png((9, 9, 9)),
            "mean": _png((1, 2, 3)),
            "heads": [_png((200, 0, 0))] * heads,
            "masks": [_png((0, 200, 0))] * heads,
        },
    }


class DinoV2Client:
    base_url = "http://fake:8000"

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.catalog = [
            {
                "id": "dino_vits16",
                "patch_size": 16,
                "default_image_size": 480,
                "family": "dino",
                "registers": 0,
            },
            {
                "id": "dinov2_vits14",
                "patch_size": 14,
                "default_image_size": 518,
                "family": "dinov2",
                "registers": 0,
            },
            {
                "id": "dinov2_vits14_reg",
                "patch_size": 14,
                "default_image_size": 518,
                "family": "dinov2",
                "registers": 4,
            },
            {"id": "old_service_entry", "patch_size": 8},
        ]

    def models(self) -> dict:  # a service whose DINO_MAX_IMAGE_SIZE is 1024
        return {
            "default": "dino_vits16",
            "models": self.catalog,
            "limits": {"max_image_size": 1024},
        }

    def attention(self, image, model=None, image_size=480, **kwargs) -> dict:
        self.calls.append({"model": model, "image_size": image_size})
        return dinov2_reply(model, 4 if model.endswith("_reg") else 0, seed=len(self.calls))


@pytest.fixture
def photo(tmp_path: Path) -> str:
    path = tmp_path / "photo.png"
    Image.new("RGB", (80, 60), (120, 90, 60)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "model,value,step,top",
    [
        ("dinov2_vits14", 518, 14, 1022),
        ("dino_vits16", 480, 16, 1024),
        ("old_service_entry", 480, 8, 1024),
    ],
)
def test_size_control_follows_the_model_and_the_services_limit(model, value, step, top):
    slider = model_handlers.size_control(DinoV2Client(), model)
    assert (slider.value, slider.step, slider.minimum, slider.maximum) == (value, step, step, top)
    assert slider.value % step == 0


def test_size_control_ignores_unknown_or_empty_models():
    for model in ("nope", None, ""):
        assert model_handlers.size_control(DinoV2Client(), model) == {
            "__type__": "update"
        }  # gr.skip(): no change


def test_compare_labels_the_register_columns(photo):
    client = DinoV2Client()
    pairs, means, table, status = compare_handlers.compare(
        client, photo, "dinov2_vits14", "dinov2_vits14_reg", 518, "keep_aspect", 0.6
    )
    assert [c["model"] for c in client.calls] == ["dinov2_vits14", "dinov2_vits14_reg"]
    assert "A to registers" not in table.columns and "B to registers" in table.columns
    reply_b = dinov2_reply("dinov2_vits14_reg", 4, seed=2)
    expected = np.asarray(reply_b["register_attention"]).sum(1)
    np.testing.assert_allclose(table["B to registers"].to_numpy(dtype=float), expected, atol=1e-4)
    # what the registers took plus the patch maps is the CLS row less its self-attention
    assert np.all(expected + np.asarray(reply_b["attentions"]).sum((1, 2)) < 1)
    assert "Registers: 4, excluded from the maps" in status and status.count("Registers:") == 1
    assert len(pairs) == 2 and means.width > 2 * GRID[1] * PATCH


def test_column_titles_name_the_registers():
    assert model_info.model_title("B", dinov2_reply("m_reg", 4, 0)) == "B: m_reg (4 registers)"
    assert model_info.model_title("A", dinov2_reply("m", 0, 0)) == "A: m (no registers)"
    assert (
        model_info.model_title("A", {"model": "dino_vits16", "family": "dino"}) == "A: dino_vits16"
    )
