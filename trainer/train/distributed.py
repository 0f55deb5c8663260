"""Process-group set-up: one plain process, torchrun (one or many nodes), or SLURM's srun.

* no launcher: a single process on CPU or one GPU, no process group;
* torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``);
* SLURM: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; ``MASTER_ADDR``/``MASTER_PORT``
  are used when set, else the first host of the job's node list and port 29500.

DDP uses NCCL on CUDA and gloo on CPU. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from trainer.model.device import pick_device

DEFAULT_MASTER_PORT = "29500"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as read from the launcher's environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # none | torchrun | slurm
    master_addr: str | None = None
    master_port: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``gpu[03-05,9],cpu1`` -> ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix = match.group(1)
    ranges = match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def read_dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Parse torchrun or SLURM variables (torchrun wins when both are present)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            "torchrun",
            env.get("MASTER_ADDR"),
            env.get("MASTER_PORT"),
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        addr = env.get("MASTER_ADDR")
        if not addr:
            names = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
            nodes = next((env[name] for name in names if env.get(name)), None)
            if not nodes:
                raise RuntimeError(
                    "SLURM job with several tasks but neither MASTER_ADDR nor "
                    "SLURM_JOB_NODELIST set"
                )
            addr = first_slurm_host(nodes)
        return DistEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            "slurm",
            addr,
            env.get("MASTER_PORT", DEFAULT_MASTER_PORT),
        )
    return DistEnv()


def init_distributed(
    device_preference: str = "auto", dist_url: str = "env://", env: Mapping[str, str] | None = None
) -> tuple[DistEnv, torch.device]:
    """Read the launcher, choose the device and, with several processes, join the process group."""
    info = read_dist_env(env)
    device = pick_device(device_preference, info.local_rank)
    if info.distributed and not (dist.is_available() and dist.is_initialized()):
        if info.master_addr:
            os.environ.setdefault("MASTER_ADDR", info.master_addr)
            os.environ.setdefault("MASTER_PORT", info.master_port or DEFAULT_MASTER_PORT)
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = elastic_attempt_store(info) if dist_url == "env://" else None
        dist.init_process_group(
            backend=backend,
            init_method=None if store is not None else dist_url,
            store=store,
            rank=info.rank,
            world_size=info.world_size,
        )
        logger.info(
            "joined process group: rank %d of %d (%s, %s)",
            info.rank,
            info.world_size,
            info.launcher,
            backend,
        )
    return info, device


def elastic_attempt_store(info: DistEnv, env: Mapping[str, str] | None = None) -> dist.Store | None:
    """Under torchrun, a store whose keys belong to this attempt of the job; else ``None``.

    After a worker fails, torchrun restarts every worker (``TORCHELASTIC_RESTART_COUNT`` goes
    up) on the same store, which still holds the previous attempt's keys: without a prefix, a
    restarted rank can read the dead rank's address and fail to connect, losing the attempt.
    """
    env = os.environ if env is None else env
    attempt = env.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
        return None
    agent_hosts_it = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    is_master = not agent_hosts_it and info.rank == 0
    store = dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        info.world_size,
        is_master=is_master,
        timeout=default_pg_timeout,
        multi_tenant=is_master,
    )
    return dist.PrefixStore(f"dino/attempt_{attempt}", store)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the only process that logs and writes files."""
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in a single process); returns it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (the value itself when not distributed)."""
    if not is_dist():
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.long, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return int(tensor.item())


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def setup_logging(level: int = logging.INFO) -> None:
    """Log at ``level`` on rank 0; other ranks only report errors. Keeps installed handlers.

    Python warnings go through the log too, so the progress bar redraws around them."""
    logging.captureWarnings(True)
    level = level if is_main_process() else logging.ERROR
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)
