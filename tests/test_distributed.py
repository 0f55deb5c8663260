"""Launcher environments (none, torchrun, SLURM) and a real 2-process gloo group on CPU."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from trainer.model.device import pick_device
from trainer.train.distributed import DistEnv, first_slurm_host, read_dist_env


def test_no_launcher_is_a_single_process():
    assert read_dist_env({}) == DistEnv(0, 1, 0, "none")
    assert not read_dist_env({}).distributed


def test_torchrun_variables():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h1",
        "MASTER_PORT": "1234",
    }
    info = read_dist_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (5, 8, 1, "torchrun")
    assert (info.master_addr, info.master_port) == ("h1", "1234") and info.distributed


def test_torchrun_wins_over_slurm_variables():
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "SLURM_PROCID": "7",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "3",
    }
    assert read_dist_env(env).launcher == "torchrun"


def test_slurm_variables_with_master_address():
    env = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "MASTER_ADDR": "10.0.0.2",
        "MASTER_PORT": "29600",
    }
    info = read_dist_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (9, 16, 1, "slurm")
    assert (info.master_addr, info.master_port) == ("10.0.0.2", "29600")


def test_slurm_master_from_node_list():
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "gpu[07-09,12]",
    }
    info = read_dist_env(env)
    assert (info.master_addr, info.master_port) == ("gpu07", "29500")


def test_single_task_slurm_job_runs_without_a_group():
    assert read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "none"


@pytest.mark.parametrize(
    "nodes,first",
    [("node1", "node1"), ("a[3-5]", "a3"), ("gpu[01,04-06],cpu9", "gpu01"), ("x-1,x-2", "x-1")],
)
def test_first_slurm_host(nodes, first):
    assert first_slurm_host(nodes) == first


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="choose cpu or auto"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        pick_device("gpu")
    assert pick_device("auto").type == "cpu"


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from trainer.train import distributed as d
    from trainer.train.loss import DINOLoss

    info, device = d.init_distributed("cpu")
    total = d.all_reduce_sum(torch.tensor([float(rank + 1)]))
    loss = DINOLoss(4, 2, 0.04, 0.04, 0, 1, center_momentum=0.0)  # centre = global batch mean
    loss.update_center(torch.full((2, 4), float(rank)))
    decided = d.broadcast_int(10 + rank, device)  # each rank proposes its own; rank 0's wins
    results[rank] = (
        info.rank,
        d.is_main_process(),
        d.get_world_size(),
        float(total),
        loss.center.tolist(),
        decided,
    )
    d.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_group():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    assert results[0][:4] == (0, True, 2, 3.0)
    assert results[1][:4] == (1, False, 2, 3.0)
    assert results[0][4] == results[1][4] == [[0.5] * 4]  # mean of rank 0's zeros and rank 1's ones
    assert (
        results[0][5] == results[1][5] == 10
    )  # the time budget's decision is rank 0's on every rank


@pytest.mark.slow
def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_data import make_image_folder
    from tests.tiny_run import tiny_cli_args

    root = Path(__file__).resolve().parents[1]
    data = make_image_folder(tmp_path / "data", {"": 8})
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        str(root / "trainer" / "run.py"),
        *tiny_cli_args(
            data, out, local_crops_number=2, out_dim=32, batch_size_per_gpu=2, log_every=1
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (out / "log.txt").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 0  # one writer, not two
    assert result.stderr.count("INFO trainer.train.loop: epoch 0:") == 1  # only rank 0 logs
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["student"])
    assert ckpt["args"]["batch_size_per_gpu"] == 2
