"""An elastic restart: under ``torchrun --max-restarts=2`` (2 CPU ranks, gloo) one rank dies
mid-epoch; the launcher restarts the job, which resumes from the last checkpoint and ends with
the weights, centre, optimizer state and loss history of an uninterrupted run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3  # 12 images, 2 ranks x 2 per batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(data: Path, out: Path, attempts: Path, crash: str | None) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--max-restarts=2",
        "--monitor-interval=0.2",
        "--master_port",
        str(_free_port()),
        "-m",
        "tests.elastic_driver",
        *tiny_cli_args(
            data, out, epochs=2, warmup_epochs=1, batch_size_per_gpu=2, out_dim=32, log_every=1
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DINO_TEST_ATTEMPTS": str(attempts)}
    env.pop("DINO_TEST_CRASH", None)
    if crash:
        env["DINO_TEST_CRASH"] = crash
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def _history(out: Path) -> tuple[list[dict], list[tuple]]:
    epochs = [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return epochs, [(s["epoch"], s["iter"], s["loss"], s["teacher_entropy"]) for s in steps]


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_restarts_and_ends_as_an_uninterrupted_run(tmp_path):
    data = make_image_folder(tmp_path / "data", {"": 12})
    straight, restarted = tmp_path / "straight", tmp_path / "restarted"
    _torchrun(data, straight, tmp_path / "straight.attempts", None)
    err = _torchrun(data, restarted, tmp_path / "restarted.attempts", "1:1")
    attempts = sorted((tmp_path / "restarted.attempts").read_text().split("\n")[:-1])
    assert attempts == ["0 0", "0 1", "1 0", "1 1"]  # one restart of both ranks
    assert "rank 1 crashes before epoch 1 step 1" in err
    assert "resumed from" in err and "at epoch 1" in err
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(restarted / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for part in ("student", "teacher"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    moments = [
        (k, s["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
        for k, s in a["optimizer"]["state"].items()
    ]
    assert all(torch.equal(x, y) for _, x, y in moments)
    epochs_a, steps_a = _history(straight)
    epochs_b, steps_b = _history(restarted)
    assert [e["epoch"] for e in epochs_b] == [0, 1]  # one line per epoch, none lost or twice
    assert [e["train_loss"] for e in epochs_b] == [e["train_loss"] for e in epochs_a]
    assert len(steps_a) == 2 * STEPS_PER_EPOCH
    assert steps_b == steps_a  # the crashed attempt's partial epoch is not kept twice
