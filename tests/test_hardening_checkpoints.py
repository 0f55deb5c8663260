"""Hostile checkpoint files: bad normalisation metadata, crafted tensors claiming gigabytes,
directories and symlinks in the checkpoint folder. Each is listed unavailable with a reason,
refused quickly, and never reaches a reply as NaN or a 500."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from backend.api.finite_json import FiniteJSONResponse, finite_dumps
from backend.main import create_app
from backend.models.registry import ModelRegistry
from tests.service_helpers import image_bytes, isolated_settings, write_tiny_checkpoint
from trainer.model.checkpoint import read_backbone
from trainer.model.checkpoint_claims import CheckpointError

WIDTH, BLOCKS = 2048, 12


def strict_json(text: str) -> object:
    """Parse ``text`` as JSON, refusing the NaN / Infinity words Python's json accepts."""

    def refuse(word: str) -> None:
        raise ValueError(f"{word} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _with_meta(src: Path, dest: Path, **changes: str) -> None:
    """A copy of the safetensors file ``src`` whose metadata has ``changes``."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    save_file(load_file(str(src)), str(dest), metadata={**meta, **changes})


BAD_META = {
    "short_mean": {"mean": "[0.5, 0.5]"},
    "text_std": {"std": '["a", "b", "c"]'},
    "zero_std": {"std": "[0.0, 0.2, 0.2]"},
    "nan_mean": {"mean": "[NaN, 0.4, 0.4]"},
    "not_json": {"mean": "half"},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    s = isolated_settings(tmp_path_factory.mktemp("hostile"))
    good, _ = write_tiny_checkpoint(s.checkpoint_dir, "good")
    for name, change in BAD_META.items():
        _with_meta(good, s.checkpoint_dir / f"{name}.safetensors", **change)
    return s


@pytest.mark.parametrize("name", sorted(BAD_META))
def test_bad_normalisation_metadata_is_unavailable_with_a_reason(folder, name):
    entries = {e.id: e for e in ModelRegistry(folder).entries()}
    assert entries["good"].error is None
    error = entries[name].error
    assert error is not None and ("mean" in error or "std" in error), error
    assert (
        ("above zero" in error)
        if name == "zero_std"
        else ("3 finite numbers" in error or "JSON" in error)
    )


def test_bad_metadata_gives_503_not_500_and_never_nan(folder):
    with TestClient(create_app(folder)) as client:
        models = {m["id"]: m for m in client.get("/models").json()["models"]}
        assert not models["zero_std"]["available"] and "std" in models["zero_std"]["error"]
        png = {"image": ("a.png", image_bytes(32, 32), "image/png")}
        for name in BAD_META:
            r = client.post("/attention", files=png, data={"model": name, "image_size": "32"})
            assert r.status_code == 503, (name, r.text)
            strict_json(r.text)


def test_replies_never_hold_nan_or_infinity():
    body = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": 2}
    text = finite_dumps(body)
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2}
    rendered = FiniteJSONResponse({"x": [float("nan")]}).body
    assert rendered == b'{"x":[null]}'


def _crafted_state() -> dict[str, torch.Tensor]:
    """A ViT of width 2048 and 12 blocks whose every tensor is a stride-0 view of one number."""
    one = torch.zeros(1)

    def big(*shape: int) -> torch.Tensor:
        return one.expand(*shape)

    state = {
        "cls_token": big(1, 1, WIDTH),
        "pos_embed": big(1, 197, WIDTH),
        "patch_embed.proj.weight": big(WIDTH, 3, 16, 16),
    }
    for i in range(BLOCKS):
        state[f"blocks.{i}.attn.qkv.weight"] = big(3 * WIDTH, WIDTH)
        state[f"blocks.{i}.mlp.fc1.weight"] = big(4 * WIDTH, WIDTH)
        state[f"blocks.{i}.mlp.fc2.weight"] = big(WIDTH, 4 * WIDTH)
    return state


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_stride_zero_pth_claiming_gigabytes_is_refused_quickly(tmp_path):
    path = tmp_path / "crafted.pth"
    torch.save(_crafted_state(), path)
    assert path.stat().st_size < 16_000  # a few KB claiming ~600 M parameters (2.4 GB)
    peak, start = _rss_peak_mb(), time.monotonic()
    with pytest.raises(CheckpointError, match="claims shape .* but the file stores 4 bytes"):
        read_backbone(path)
    assert time.monotonic() - start < 2.0
    assert _rss_peak_mb() - peak < 200  # nothing near the claimed 2.4 GB was allocated
    s = isolated_settings(tmp_path / "svc")
    os.replace(path, s.checkpoint_dir / "crafted.pth")
    entry = next(e for e in ModelRegistry(s).entries() if e.id == "crafted")
    assert "corrupt or crafted" in entry.error


def test_safetensors_claiming_more_than_it_holds_is_refused(tmp_path):
    header = json.dumps(
        {"pos_embed": {"dtype": "F32", "shape": [1, 197, WIDTH], "data_offsets": [0, 4]}}
    ).encode()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    start = time.monotonic()
    with pytest.raises(CheckpointError):
        read_backbone(path)
    assert time.monotonic() - start < 2.0


def test_parameter_claims_are_bounded_for_every_family(tmp_path, monkeypatch):
    path, model = write_tiny_checkpoint(tmp_path, "small")
    params = sum(p.numel() for p in model.state_dict().values())
    monkeypatch.setenv("DINO_MAX_PARAMS", str(params - 1))
    with pytest.raises(CheckpointError, match="over the DINO_MAX_PARAMS limit"):
        read_backbone(path)
    monkeypatch.setenv("DINO_MAX_PARAMS", str(params))
    assert read_backbone(path)[1].embed_dim == 64


def _folder_with_odd_names(tmp_path: Path, **overrides: object):
    s = isolated_settings(tmp_path, **overrides)
    d = s.checkpoint_dir
    good, _ = write_tiny_checkpoint(d, "good")
    (d / "folder.pth").mkdir()
    (d / "weights.safetensors").mkdir()
    os.symlink(d / "missing.pth", d / "dangling.pth")
    os.symlink("/etc/passwd", d / "passwd.pth")
    os.symlink(good, d / "inside.safetensors")
    outside, _ = write_tiny_checkpoint(tmp_path, "outside")
    os.symlink(outside, d / "outside.safetensors")
    os.mkfifo(d / "pipe.pth")
    return s


def test_directories_links_and_fifos_are_listed_with_a_reason(tmp_path):
    s = _folder_with_odd_names(tmp_path)
    start = time.monotonic()
    entries = {e.id: e for e in ModelRegistry(s).entries() if e.source == "file"}
    assert time.monotonic() - start < 5.0  # the FIFO was never opened
    assert entries["good"].error is None and entries["inside"].error is None
    assert "is a directory" in entries["folder"].error
    assert "is a directory" in entries["weights"].error
    assert "does not exist" in entries["dangling"].error
    for name in ("passwd", "outside"):
        assert "outside the checkpoint folder" in entries[name].error
        assert "DINO_FOLLOW_EXTERNAL_SYMLINKS" in entries[name].error
    assert "not a regular file" in entries["pipe"].error
    for entry in entries.values():
        assert str(tmp_path) not in (entry.error or "")


def test_external_links_are_followed_when_allowed(tmp_path):
    s = _folder_with_odd_names(tmp_path, follow_external_symlinks=True)
    entries = {e.id: e for e in ModelRegistry(s).entries() if e.source == "file"}
    assert entries["outside"].error is None
    assert entries["passwd"].error is not None and "list index" not in entries["passwd"].error
    with TestClient(create_app(s)) as client:
        r = client.post(
            "/attention",
            files={"image": ("a.png", image_bytes(32, 32), "image/png")},
            data={"model": "passwd", "image_size": "32"},
        )
        assert r.status_code == 503 and "/etc" not in r.json()["detail"]
