"""Every example of README.md and docs/*.md, run as written against a live stack.

The service runs on 127.0.0.1:8000 and the web app on 127.0.0.1:7860, the addresses the docs
name, from the working folder of a user who has ``cat.jpg``, ``clip.mp4`` and the rest there
(``. .venv/bin/activate`` done: ``.venv/bin`` leads ``PATH``). Per command
(tests/docs_blocks.py): ``curl`` and shell lines run as written (an HTTP error fails them);
training, evaluation and benchmark commands run until their own argparse has accepted every
flag; a few are left out with a stated reason. Python blocks run whole. The one substitution:
zoo ids that need a download become the local default ``run_ep0100`` (nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.docs_blocks import (
    FILE_SKIPS,
    FLAGS_DRIVER,
    NOT_COMMANDS,
    PYTHON,
    SHELL,
    Block,
    blocks,
    classify,
    commands,
    flags_command,
    looks_like_commands,
)
from tests.service_helpers import drawn_scene, tiny_vit
from tests.video_clips import write_clip
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "run_ep0100"  # the newest file: the service's default here
ZOO_IDS = re.compile(r"(?<![\w/.-])(dino_vits16|dino_vits8|dinov2_vits14_reg)(?![\w-])")
MAX_SKIPS = 8  # commands left out outside FILE_SKIPS: keep it few
pytestmark = pytest.mark.slow


def substitute(text: str) -> str:
    return ZOO_IDS.sub(LOCAL, text)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _write_models(folder: Path) -> None:
    """A training checkpoint (``checkpoint`` and ``checkpoint:student``), then two random-init
    ViT-S/16 files of one run; the newer one is the default."""
    folder.mkdir(parents=True)
    teacher, student = tiny_vit(1), tiny_vit(2)
    torch.save(
        {
            "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
            "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
            "epoch": 1,
        },
        folder / "checkpoint.pth",
    )
    for seed, name in enumerate(("run_ep0010", LOCAL)):
        time.sleep(0.02)
        torch.manual_seed(seed)
        model = build_vit("vit_small", 16).eval()
        export_backbone_safetensors(
            model,
            folder / f"{name}.safetensors",
            arch="vit_small",
            epoch=seed,
            trained=False,
            dtype=torch.float16,
        )


def _write_inputs(work: Path) -> None:
    """The files the examples name, and the repository's folders the commands run from."""
    for name, (w, h) in {"cat": (96, 64), "dog": (80, 64), "photo": (96, 64)}.items():
        drawn_scene(w, h).save(work / f"{name}.jpg")
    drawn_scene(64, 64).save(work / "a.jpg")
    drawn_scene(48, 64).save(work / "b.jpg")
    mask = drawn_scene(96, 64).convert("L").point(lambda v: 255 if v > 150 else 0)
    mask.save(work / "cat_mask.png")
    write_clip(work / "clip.mp4", 6, 64, 48, fps=12)
    for name in ("trainer", "benchmarks", "backend", "app", ".venv"):
        (work / name).symlink_to(ROOT / name)
    (work / "runs").mkdir()
    shutil.copy(ROOT / "trainer/recipes/vit_tiny_duts_cpu.yaml", work / "runs/vits16.yaml")
    (work / "flags_driver.py").write_text(FLAGS_DRIVER)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The service on :8000 and the app on :7860; yields the users' working folder."""
    if not (shutil.which("curl") and shutil.which("jq")):
        pytest.skip("curl and jq are needed to run the docs' commands")
    if not (_port_free(8000) and _port_free(7860)):
        pytest.skip("port 8000 or 7860 is taken; the docs' examples name them")
    from app.client import BackendClient
    from app.ui import build_demo, launch
    from benchmarks.serving import uvicorn_process
    from tests.app_stack import wait_for

    tmp = tmp_path_factory.mktemp("docs")
    work = tmp / "work"
    work.mkdir()
    _write_models(tmp / "checkpoints")
    _write_inputs(work)
    env = {
        "DINO_CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "DINO_CACHE_DIR": str(tmp / "cache"),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEVICE": "cpu",
    }
    with uvicorn_process(env, port=8000, timeout_s=180) as url:
        client = BackendClient(url, timeout=120)
        demo = build_demo(client, [])
        launch(demo, host="127.0.0.1", port=7860, prevent_thread_lock=True)
        try:
            wait_for("http://127.0.0.1:7860/")
            yield work
        finally:
            demo.close()
            client.close()


def shell_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang in SHELL and b.path not in FILE_SKIPS]


def _script(block: Block) -> tuple[str, list[str]]:
    """The bash script of a block's commands (skipped ones left out) and the kinds it holds."""
    lines, kinds = [], []
    for command in commands(block.body):
        kind, _reason = classify(block, command)
        kinds.append(kind)
        if kind == "run":
            lines.append(substitute(command))
        elif kind == "flags":
            lines.append(flags_command(command))
    return "\n".join(lines), kinds


PRELUDE = """set -e -o pipefail
export PATH="$PWD/.venv/bin:$PATH"
curl() { command curl --fail-with-body --max-time 300 "$@"; }
check_flags() { printf '%s\\0' "$@" > "$PWD/flags/$(date +%s%N).argv"; }  # checked after
"""


def _run_bash(script: str, work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DINO_DATA_DIR": str(work / "data")}
    return subprocess.run(
        ["bash", "-c", PRELUDE + script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_block_is_classified():
    """Untagged blocks hold no commands; every shell command has a rule; skips stay few."""
    skipped = []
    for block in blocks():
        if block.lang in NOT_COMMANDS or not block.lang:
            assert not looks_like_commands(block.body), f"{block.where}: tag it (bash/python)"
            continue
        assert block.lang in SHELL | PYTHON, f"{block.where}: unknown language {block.lang!r}"
        if block.lang in PYTHON:
            continue
        for command in commands(block.body):
            kind, reason = classify(block, command)
            assert kind != "unclassified", reason
            if kind == "skip" and block.path not in FILE_SKIPS:
                skipped.append(f"{block.where}: {command[:60]} ({reason})")
    assert len(skipped) <= MAX_SKIPS, "\n".join(skipped)


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: b.where)
def test_shell_block_runs(block, request):
    script, kinds = _script(block)
    if "run" not in kinds and "flags" not in kinds:
        pytest.skip(f"{block.where}: every command is left out with a reason")
    work = request.getfixturevalue("stack") if "run" in kinds else _flags_folder(request)
    shutil.rmtree(work / "flags", ignore_errors=True)
    (work / "flags").mkdir()
    out = _run_bash(script, work)
    assert out.returncode == 0, (
        f"{block.where}\n{script}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    )
    if "flags" in kinds:
        _check_flags(work, block, kinds.count("flags"))
    if block.path == "README.md" and "curl" in script:
        _check_readme_replies(out.stdout)
        assert (work / "mean.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_flags(work: Path, block: Block, expected: int) -> None:
    """Every flags command's argv (as bash expanded it), checked in one process."""
    assert len(list((work / "flags").glob("*.argv"))) == expected
    checked = subprocess.run(
        [sys.executable, "flags_driver.py", "flags"],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, f"{block.where}\n{checked.stderr[-4000:]}"
    assert checked.stderr.count("ok: ") == expected, checked.stderr


def _flags_folder(request) -> Path:
    folder = request.getfixturevalue("tmp_path") / "work"
    folder.mkdir()
    _write_inputs(folder)
    return folder


def json_values(text: str) -> list:
    """The JSON values jq printed one after another."""
    decoder, values, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        value, i = decoder.raw_decode(text, i)
        values.append(value)
        while i < len(text) and text[i].isspace():
            i += 1
    return values


def _check_readme_replies(stdout: str) -> None:
    """The quick start's three queries: model and grid, three matches, one box and its seed."""
    model, grid, coverage, pairs, boxes, seed = json_values(stdout)
    assert model == LOCAL and grid == [30, 45] and len(coverage) == 6
    assert len(pairs) == 3 and len(pairs[0]) == 5  # [row_a, col_a, row_b, col_b, similarity]
    assert len(boxes) == 1 and len(boxes[0]) == 4 and len(seed) == 2


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang in PYTHON], ids=lambda b: b.where)
def test_python_block_runs(block, stack):
    code = substitute(block.body)
    (stack / "example.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "example.py"],
        cwd=stack,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{block.where}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
