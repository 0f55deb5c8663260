"""Sharding a frozen-backbone pass across processes, and shard files that survive a kill.

Under ``torchrun`` every rank takes the dataset indices ``rank, rank + world, ...`` (what
``DistributedSampler(shuffle=False)`` gives, without the padding duplicates it adds to even out
the ranks), runs them, and the rows are gathered back into dataset order with their indices, so
unreadable files dropped on one rank cannot shift another rank's rows.

Shard files (for the export) cover contiguous index ranges ``[k * size, (k + 1) * size)``; shard
``k`` belongs to rank ``k % world``. A shard is written to a temporary name and renamed, so a
file under its final name is complete, and a rerun skips it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from trainer.model.checkpoint_write import default_file_mode


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_launcher_group(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the ``torchrun`` (or SLURM) process group when launched by one (gloo on CPU, NCCL on
    CUDA); ``(rank, world_size, device)``. A single process joins nothing."""
    from trainer.train.distributed import init_distributed

    info, dev = init_distributed(device)
    return info.rank, info.world_size, dev


def leave_group() -> None:
    """Leave the process group joined by :func:`join_launcher_group` (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class StridedSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` below ``n``: each index on exactly one rank."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def gather_in_order(rows: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``rows`` (CPU) with their dataset ``indices``, sorted by index (all ranks
    receive the result). In a single process the rows are only sorted."""
    _, world = rank_world()
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (rows.cpu(), indices.cpu()))
        rows = torch.cat([p[0] for p in parts if len(p[1])] or [rows.cpu()])
        indices = torch.cat([p[1] for p in parts])
    order = torch.argsort(indices)
    return rows[order], indices[order]


def shard_ranges(n: int, size: int, rank: int = 0, world: int = 1) -> list[tuple[int, range]]:
    """``(shard number, its dataset indices)`` of the shards of ``rank``, in order."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    count = (n + size - 1) // size
    return [(k, range(k * size, min(n, (k + 1) * size))) for k in range(rank, count, world)]


def shard_name(k: int) -> str:
    """The file name of shard ``k``."""
    return f"shard-{k:05d}.npz"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
