"""Which names in the checkpoint folder are read as models, and why the others are not.

A checkpoint is a regular ``.pth`` / ``.pt`` / ``.safetensors`` file or a transformers model
folder. Names that look like checkpoints but cannot be one are listed as unavailable with a
reason rather than left out: a directory named ``*.pth``, a symlink whose target is missing,
a FIFO or device. A symlink is followed only when its target lies inside the checkpoint folder,
unless ``DINO_FOLLOW_EXTERNAL_SYMLINKS`` allows others. Reasons speak of the name in the folder,
never of a server path.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from backend.models.entries import ModelEntry, is_model_folder
from trainer.model.checkpoint import CHECKPOINT_SUFFIXES, HF_WEIGHTS

EXTERNAL_SETTING = "DINO_FOLLOW_EXTERNAL_SYMLINKS"


@dataclass
class FolderScan:
    """The folder's readable checkpoints and the refused names, each with its reason."""

    paths: list[Path] = field(default_factory=list)
    refused: list[ModelEntry] = field(default_factory=list)


def _inside(target: Path, root: Path) -> bool:
    try:
        target.relative_to(root)
    except ValueError:
        return False
    return True


def _link_problem(path: Path, root: Path, follow_external: bool) -> str | None:
    """Why the symlink ``path`` is not followed, or None."""
    target = Path(os.path.realpath(path))
    if not os.path.lexists(target) or not target.exists():
        return f"{path.name} is a symlink to a file that does not exist (a dangling link)"
    if not follow_external and not _inside(target, root):
        return (
            f"{path.name} is a symlink to a file outside the checkpoint folder; such links are "
            f"not followed (set {EXTERNAL_SETTING}=true to allow them, or copy the file in)"
        )
    return None


def _kind_problem(path: Path) -> str | None:
    """Why ``path`` (a checkpoint-like name) cannot be read as a checkpoint, or None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # vanished while scanned: not listed
    if stat.S_ISDIR(mode):
        if is_model_folder(path):
            return None
        return (
            f"{path.name} is a directory, not a checkpoint file; a model folder holds "
            f"{HF_WEIGHTS} and config.json"
        )
    if not stat.S_ISREG(mode):
        return f"{path.name} is not a regular file (a FIFO, socket or device); it is not read"
    return None


def _looks_like_checkpoint(path: Path) -> bool:
    return path.suffix in CHECKPOINT_SUFFIXES or is_model_folder(path)


def scan_folder(folder: Path, follow_external: bool = False) -> FolderScan:
    """The checkpoint candidates of ``folder`` (sorted) and its refused checkpoint-like names."""
    scan = FolderScan()
    if not folder.is_dir():
        return scan
    root = Path(os.path.realpath(folder))
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        problem = None
        if not _looks_like_checkpoint(path):
            continue
        if path.is_symlink():
            problem = _link_problem(path, root, follow_external)
        problem = problem or _kind_problem(path)
        if problem is None and path.exists():
            scan.paths.append(path)
        elif problem is not None:
            model_id = path.name if path.suffix not in CHECKPOINT_SUFFIXES else path.stem
            scan.refused.append(ModelEntry(model_id, "file", path=path, error=problem))
    return scan
