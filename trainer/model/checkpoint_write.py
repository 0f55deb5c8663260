"""Writing checkpoints: atomically (temp file, fsync, rename) and as safetensors backbones."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file as save_safetensors

from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD, DinoViT


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a served file must be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def export_backbone_safetensors(
    backbone: DinoViT,
    path: str | Path,
    arch: str,
    epoch: int | None,
    trained: bool = True,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the backbone weights with metadata (arch, patch, dims, epoch, mean/std), atomically.

    ``dtype`` (float32, float16 or bfloat16) is the dtype of the stored floating-point tensors;
    :func:`load_backbone` always returns a float32 model. ``extra`` (JSON-serialisable) comes back
    as :attr:`BackboneInfo.extra`, e.g. a model card ``summary``.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"unsupported export dtype {dtype}; choose one of float32, float16, bfloat16"
        )
    blk = backbone.blocks[0].attn
    meta = {
        "format": "dino-backbone",
        "arch": arch,
        "patch_size": str(backbone.patch_size),
        "embed_dim": str(backbone.embed_dim),
        "depth": str(len(backbone.blocks)),
        "num_heads": str(blk.num_heads),
        "epoch": "" if epoch is None else str(epoch),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "trained": "true" if trained else "false",
        "extra": json.dumps(extra or {}),
    }
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in backbone.state_dict().items()
    }
    _atomic_write(Path(path), lambda tmp: save_safetensors(state, tmp, metadata=meta))


# -- reading ---------------------------------------------------------------------------
