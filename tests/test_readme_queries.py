"""The README's quick-start queries, run verbatim (curl and jq) against a real service on :8000."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.service_helpers import drawn_scene, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_queries() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line for line in lines if re.match(r"curl -s .*http://127\.0\.0\.1:8000/", line)]


def json_values(text: str) -> list:
    """The JSON values jq printed one after another."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while i < len(text.rstrip()):
        value, i = decoder.raw_decode(text, i)
        values.append(value)
        while i < len(text) and text[i].isspace():
            i += 1
    return values


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_readme_queries_run_verbatim(tmp_path):
    queries = readme_queries()
    assert len(queries) == 3
    if not (shutil.which("curl") and shutil.which("jq")):
        pytest.skip("curl and jq are needed to run the README's queries")
    if not _port_free(8000):
        pytest.skip("port 8000 is taken; the README's queries name it")
    from benchmarks.serving import uvicorn_process

    (tmp_path / "ckpt").mkdir()
    write_tiny_checkpoint(tmp_path / "ckpt", "tiny")
    drawn_scene(96, 64).save(tmp_path / "cat.jpg")
    drawn_scene(80, 64).save(tmp_path / "dog.jpg")
    env = {
        "DINO_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "DINO_CACHE_DIR": str(tmp_path / "cache"),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEVICE": "cpu",
        "DINO_PORT": "8000",
    }
    with uvicorn_process(env, port=8000):
        outputs = [
            subprocess.run(
                ["bash", "-o", "pipefail", "-c", q], cwd=tmp_path, capture_output=True, text=True
            )
            for q in queries
        ]
    for query, out in zip(queries, outputs, strict=True):
        assert out.returncode == 0, (query, out.stderr)
    model, grid, coverage = json_values(outputs[0].stdout)
    assert model == "tiny" and len(grid) == 2 and len(coverage) >= 1
    (pairs,) = json_values(outputs[1].stdout)
    assert len(pairs) == 3 and len(pairs[0]) == 5  # [row_a, col_a, row_b, col_b, similarity]
    boxes, seed = json_values(outputs[2].stdout)
    assert len(boxes) == 1 and len(boxes[0]) == 4 and len(seed) == 2
