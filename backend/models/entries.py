"""One listed model (:class:`ModelEntry`), one loaded model (:class:`LoadedModel`), and what
the registry reads of a checkpoint file to list it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.model.checkpoint import HF_WEIGHTS, BackboneInfo, read_backbone
from trainer.model.dinov2 import DINOV2_IMG_SIZE
from trainer.model.dinov3 import DINOV3_IMG_SIZE, max_params
from trainer.model.vit import ARCHS, DinoViT

log = logging.getLogger(__name__)
STUDENT_SUFFIX = ":student"
STUDENT_NOTE = " (student)"
ZOO_LAYOUTS = {"dinov2": "authors", "dinov3": "timm"}
DEFAULT_IMAGE_SIZES = {"dino": 480, "dinov2": DINOV2_IMG_SIZE, "dinov3": DINOV3_IMG_SIZE}


@dataclass
class ModelEntry:
    """One listed model; ``error`` set means unavailable."""

    id: str
    source: str  # file | zoo | placeholder
    arch: str | None = None
    patch_size: int | None = None
    num_heads: int | None = None
    path: Path | None = None
    which: str = "teacher"
    layout: str | None = None
    trained: bool = True
    error: str | None = None
    summary: str | None = None
    depth: int | None = None
    family: str | None = None  # dino | dinov2 | dinov3 (None: the file could not be read)
    registers: int | None = None

    def public(self, loaded: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "arch": self.arch,
            "patch_size": self.patch_size,
            "num_heads": self.num_heads,
            "source": self.source,
            "layout": self.layout,
            "which": self.which,
            "loaded": loaded,
            "available": self.error is None,
            "trained": self.trained,
            "error": self.error,
            "summary": self.summary,
            "depth": self.depth,
            "family": self.family,
            "registers": self.registers,
            "default_image_size": default_image_size(self.family),
        }


@dataclass
class LoadedModel:
    """A model ready for inference."""

    entry: ModelEntry
    model: DinoViT
    info: BackboneInfo
    device: torch.device
    identity: tuple[object, ...] = ()  # the weights file as loaded: (path, size, mtime_ns)


def file_identity(path: Path | None) -> tuple[object, ...]:
    """(path, size, mtime_ns) of a weights file, () if none: a rewritten file is a new identity."""
    if path is None:
        return ()
    try:
        stat = weights_stat(Path(path))  # a model folder: its model.safetensors
    except OSError:
        return (str(path),)
    return (str(path), stat.st_size, stat.st_mtime_ns)


def arch_depth(arch: str | None) -> int | None:
    """Number of blocks of a named architecture, None when the name is not a known one."""
    spec = ARCHS.get(arch or "")
    return None if spec is None else spec.depth


def is_model_folder(path: Path) -> bool:
    """A transformers model folder: a directory with ``config.json`` / ``model.safetensors``."""
    return path.is_dir() and ((path / "config.json").is_file() or (path / HF_WEIGHTS).is_file())


def weights_stat(path: Path) -> os.stat_result:
    """``stat`` of a weights file, or of a folder's ``model.safetensors`` (else of the folder)."""
    weights = path / HF_WEIGHTS if path.is_dir() else path
    return weights.stat() if weights.exists() else path.stat()


def default_image_size(family: str | None) -> int | None:
    """``image_size`` when a request leaves it out: DINO 480, DINOv2 518 (its training size),
    DINOv3 448 (28 x 28 patches; its RoPE works at any multiple of 16)."""
    return DEFAULT_IMAGE_SIZES.get(family or "")


def card_summary(extra: dict[str, Any]) -> str | None:
    """The model card line of a file's ``extra`` metadata: its non-empty ``summary``, else None."""
    summary = extra.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        return None
    return summary.strip()


def size_error(info: BackboneInfo) -> str | None:
    """Why a model is too large to serve (its parameter count over ``DINO_MAX_PARAMS``), or None."""
    limit = max_params()
    if info.params is None or info.params <= limit:
        return None
    return (
        f"{info.arch} has {info.params:,} parameters ({info.params / 1e9:.2f}e9), over this "
        f"service's DINO_MAX_PARAMS limit of {limit:.3g}; raise DINO_MAX_PARAMS on a machine "
        "with the memory for it"
    )


def inspect_file(path: Path, model_id: str) -> list[ModelEntry]:
    """Entries for one checkpoint file (teacher, and student for training checkpoints)."""
    try:
        state, info = read_backbone(path)
        del state
    except Exception as exc:  # noqa: BLE001 - any failure lists the file as unavailable
        return [ModelEntry(model_id, "file", path=path, error=f"cannot load {path.name}: {exc}")]
    too_large = size_error(info)
    if too_large is not None:
        return [
            ModelEntry(
                model_id,
                "file",
                info.arch,
                info.patch_size,
                info.num_heads,
                path,
                layout=info.layout,
                error=too_large,
                depth=info.depth,
                family=info.family,
                registers=info.registers,
            )
        ]
    summary = card_summary(info.extra)
    entry = ModelEntry(
        model_id,
        "file",
        info.arch,
        info.patch_size,
        info.num_heads,
        path,
        "teacher",
        info.layout,
        info.trained,
        summary=summary,
        depth=info.depth,
        family=info.family,
        registers=info.registers,
    )
    entries = [entry]
    if info.layout.startswith("training-"):
        entries.append(
            ModelEntry(
                model_id + STUDENT_SUFFIX,
                "file",
                info.arch,
                info.patch_size,
                info.num_heads,
                path,
                "student",
                "training-student",
                info.trained,
                summary=None if summary is None else summary + STUDENT_NOTE,
                depth=info.depth,
                family=info.family,
                registers=info.registers,
            )
        )
    return entries
