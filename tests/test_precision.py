"""Inference precisions: fp32 (default), bf16 autocast, int8 dynamic quantisation, auto."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from backend.main import create_app
from tests.service_helpers import drawn_scene, isolated_settings, png_bytes, write_tiny_checkpoint
from trainer.model.inference_precision import (
    UnsupportedPrecision,
    int8_copy,
    native_precisions,
    resolve_inference_precision,
)

CPU = torch.device("cpu")
ALL_FLAGS = frozenset({"avx512_bf16", "avx512_vnni"})
# Per-mode tolerance of the CLS maps against fp32, as a fraction of the largest fp32 value.
TOLERANCE = {"fp32": 0.0, "bf16": 0.05, "int8": 0.10}
NATIVE = native_precisions(CPU)


def _reference_cls_maps(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The paper's last-block CLS attention, written out: softmax(q k^T / sqrt(d)), fp32."""
    with torch.no_grad():
        tokens = model.prepare_tokens(x) if hasattr(model, "prepare_tokens") else None
        if tokens is None:
            tokens = model._pos_embed(model.patch_embed(x))
        for block in model.blocks[:-1]:
            tokens = block(tokens)
        attn = model.blocks[-1].attn
        h = model.blocks[-1].norm1(tokens)
        b, n, d = h.shape
        qkv = (h @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, attn.num_heads, -1)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return weights[0, :, 0, 1:]


def test_auto_picks_the_fastest_native_mode_and_emulated_modes_are_refused():
    assert native_precisions(CPU, frozenset()) == ["fp32"]
    assert resolve_inference_precision("auto", CPU, frozenset()) == "fp32"
    assert resolve_inference_precision("auto", CPU, frozenset({"avx512_vnni"})) == "int8"
    assert resolve_inference_precision("auto", CPU, ALL_FLAGS) == "bf16"
    with pytest.raises(UnsupportedPrecision, match="this machine runs fp32 \\(or auto\\)"):
        resolve_inference_precision("bf16", CPU, frozenset())
    with pytest.raises(UnsupportedPrecision, match="unknown precision 'fp16'"):
        resolve_inference_precision("fp16", CPU, ALL_FLAGS)


def test_int8_keeps_the_readout_weights_and_stays_close_to_fp32():
    from benchmarks.serving import tiny_vit
    from trainer.model.block_attention import block_attention

    model = tiny_vit(0, 8, 64, depth=2).eval()
    quantised = int8_copy(model)
    assert type(quantised.blocks[0].mlp.fc1).__name__ == "Linear"
    assert "quantized" in type(quantised.blocks[0].mlp.fc1).__module__
    assert torch.equal(quantised.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        ours = block_attention(quantised, x, 1, [0]).attention[0, :, 0, 1:]
    reference = _reference_cls_maps(model, x)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() <= TOLERANCE["int8"] * reference.max()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = isolated_settings(tmp_path_factory.mktemp("precision"), default_model="tiny")
    write_tiny_checkpoint(settings.checkpoint_dir, "tiny")
    with TestClient(create_app(settings)) as c:
        yield c


def _post(c: TestClient, **fields: str):
    files = {"image": ("s.png", png_bytes(drawn_scene(64, 48)), "image/png")}
    return c.post("/attention", files=files, data={"overlays": "false", **fields})


@pytest.mark.parametrize("mode", [m for m in ("bf16", "int8") if m in NATIVE])
def test_each_native_mode_gives_the_same_fields_and_maps_close_to_fp32(client, mode):
    fp32 = _post(client, precision="fp32", image_size="48").json()
    other = _post(client, precision=mode, image_size="48").json()
    assert other["precision"] == mode and fp32["precision"] == "fp32"
    assert set(other) == set(fp32)
    a, b = np.asarray(fp32["attentions"]), np.asarray(other["attentions"])
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= TOLERANCE[mode] * a.max()
    assert not other["cached"]  # the cache does not serve an fp32 result to another mode


def test_the_cache_keys_on_precision_and_auto_resolves(client):
    first = _post(client, precision="fp32", image_size="40").json()
    again = _post(client, precision="fp32", image_size="40").json()
    assert not first["cached"] and again["cached"]
    auto = _post(client, precision="auto", image_size="40").json()
    assert auto["precision"] == NATIVE[-1]
    assert auto["cached"] == (NATIVE[-1] == "fp32")


def test_int8_is_built_once_per_model(client, monkeypatch):
    if "int8" not in NATIVE:
        pytest.skip("this CPU has no VNNI: int8 is refused here")
    import backend.analysis.model_step as model_step

    built = []
    real = model_step.int8_copy
    monkeypatch.setattr(model_step, "int8_copy", lambda m: built.append(1) or real(m))
    client.app.state.service.step._int8.clear()
    for size in ("32", "40", "48", "56"):
        assert _post(client, precision="int8", image_size=size).status_code == 200
    assert built == [1]


def test_an_unsupported_mode_is_refused_with_the_modes_this_machine_runs(client, monkeypatch):
    import trainer.model.inference_precision as ip

    monkeypatch.setattr(ip, "cpu_flags", lambda: frozenset())
    r = _post(client, precision="bf16", image_size="48")
    assert r.status_code == 400 and r.json()["code"] == "unsupported_precision"
    assert "this machine runs fp32" in r.json()["detail"]
    r = _post(client, precision="fp16", image_size="48")
    assert r.status_code == 422 and "precision" in r.json()["detail"]
