"""``trainer.run`` under ``torch.distributed.run -m tests.elastic_driver``, with a 2-block ViT and
an optional crash: with ``DINO_TEST_CRASH=EPOCH:STEP`` rank 1 ends its process (``os._exit``,
as a killed worker) before that step, on the launcher's first attempt only
(``TORCHELASTIC_RESTART_COUNT`` 0), so the restarted job must resume and finish the run.
Every attempt appends ``RESTART_COUNT RANK`` to ``DINO_TEST_ATTEMPTS`` (a file)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tests.tiny_run import patch_tiny_networks
from trainer import run
from trainer.train import engine


def _crash_hook(epoch_step: str):
    crash_epoch, crash_step = (int(x) for x in epoch_step.split(":"))
    real_step = engine.train_step

    def train_step(ctx, crops, epoch, it):
        niter = len(ctx.schedules.lr) // ctx.config.epochs
        if (epoch, it - epoch * niter) == (crash_epoch, crash_step):
            sys.stderr.write(f"rank 1 crashes before epoch {epoch} step {crash_step}\n")
            sys.stderr.flush()
            os._exit(17)
        return real_step(ctx, crops, epoch, it)

    return train_step


def main() -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    with open(os.environ["DINO_TEST_ATTEMPTS"], "a") as fh:
        fh.write(f"{attempt} {rank}\n")
    monkeypatch = pytest.MonkeyPatch()
    patch_tiny_networks(monkeypatch)
    crash = os.environ.get("DINO_TEST_CRASH")
    if crash and rank == 1 and attempt == 0:
        monkeypatch.setattr(engine, "train_step", _crash_hook(crash))
    run.main(sys.argv[1:])


if __name__ == "__main__":
    main()
