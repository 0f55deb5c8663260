"""Which models exist (checkpoint files, the official zoo, the placeholder) and which are loaded.

Ids: a file's name without its extension (the full name when two files share a stem).
Training checkpoints serve their ``teacher`` under the plain id and their ``student``
under ``<id>:student``. Every entry carries a one-line model card ``summary`` (a file's
safetensors ``extra["summary"]``, a fixed line for the zoo and the placeholder, else None).
Loading is lazy, cached LRU-style (``DINO_MAX_LOADED_MODELS``) and thread-safe; a file that
cannot be parsed is listed as unavailable with its reason.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import ModelUnavailable, UnknownModel
from backend.models import zoo
from backend.models.placeholder import PLACEHOLDER_ID, PLACEHOLDER_SUMMARY, placeholder_path
from backend.settings import Settings
from trainer.model.checkpoint import (
    CHECKPOINT_SUFFIXES,
    HF_WEIGHTS,
    BackboneInfo,
    load_backbone,
    read_backbone,
)
from trainer.model.device import pick_device
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
                layout=info.source,
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
        info.source,
        info.trained,
        summary=summary,
        depth=info.depth,
        family=info.family,
        registers=info.registers,
    )
    entries = [entry]
    if info.source.startswith("training-"):
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


class ModelRegistry:
    """Thread-safe catalogue and LRU cache of loaded models."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self._lock = threading.RLock()
        self._files: dict[Path, tuple[tuple[int, int], list[ModelEntry]]] = {}
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {}
        self._zoo_errors: dict[str, str] = {}

    # -- catalogue -----------------------------------------------------------------------
    def _checkpoint_files(self) -> list[Path]:
        folder = Path(self.settings.checkpoint_dir)
        if not folder.is_dir():
            return []
        return sorted(
            p
            for p in folder.iterdir()
            if not p.name.startswith(".")
            and ((p.is_file() and p.suffix in CHECKPOINT_SUFFIXES) or is_model_folder(p))
        )

    def _file_entries(self) -> list[ModelEntry]:
        files = self._checkpoint_files()
        stems = [p.stem for p in files]
        out: list[ModelEntry] = []
        seen: dict[Path, tuple[tuple[int, int], list[ModelEntry]]] = {}
        for path in files:
            stat = weights_stat(path)
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._files.get(path)
            if cached is None or cached[0] != key:
                model_id = (
                    path.stem if stems.count(path.stem) == 1 or path.suffix == ".pth" else path.name
                )
                model_id = path.name if path.is_dir() else model_id
                cached = (key, inspect_file(path, model_id))
            seen[path] = cached
            out.extend(cached[1])
        self._files = seen
        return out

    def _zoo_entries(self) -> list[ModelEntry]:
        out = []
        for model_id, spec in zoo.ZOO.items():
            cached = spec.cache_path(self.settings.cache_dir).exists()
            error = self._zoo_errors.get(model_id) if not cached else None
            if not cached and not self.settings.allow_downloads:
                error = "not in the cache and downloads are off (DINO_ALLOW_DOWNLOADS=false)"
            out.append(
                ModelEntry(
                    model_id,
                    "zoo",
                    spec.arch,
                    spec.patch_size,
                    spec.num_heads,
                    spec.cache_path(self.settings.cache_dir),
                    layout=ZOO_LAYOUTS.get(spec.family, "backbone"),
                    error=error,
                    summary=spec.summary,
                    depth=arch_depth(spec.arch),
                    family=spec.family,
                    registers=spec.registers,
                )
            )
        return out

    def _placeholder_entries(self) -> list[ModelEntry]:
        path = placeholder_path(self.settings.cache_dir)
        if not path.exists():
            return []
        return [
            ModelEntry(
                PLACEHOLDER_ID,
                "placeholder",
                "vit_small",
                16,
                6,
                path,
                layout="safetensors",
                trained=False,
                summary=PLACEHOLDER_SUMMARY,
                depth=arch_depth("vit_small"),
                family="dino",
                registers=0,
            )
        ]

    def entries(self) -> list[ModelEntry]:
        """Every model, rescanning the checkpoint folder (unchanged files are not re-read)."""
        with self._lock:
            return self._file_entries() + self._zoo_entries() + self._placeholder_entries()

    def resolve(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id``, or :class:`UnknownModel` (404) listing the valid ids."""
        entries = self.entries()
        for entry in entries:
            if entry.id == model_id:
                return entry
        ids = ", ".join(e.id for e in entries)
        raise UnknownModel(f"unknown model {model_id!r}; choose one of {ids}")

    def is_loaded(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._loaded

    def _available_files(self) -> list[ModelEntry]:
        return [
            e
            for e in self.entries()
            if e.source == "file" and e.error is None and e.which == "teacher"
        ]

    def newest_file_model(self) -> str | None:
        """The available checkpoint-folder model with the newest file (teacher ids only)."""
        candidates = self._available_files()
        if not candidates:
            return None
        return max(candidates, key=lambda e: (e.path.stat().st_mtime_ns, e.id)).id  # type: ignore[union-attr]

    def has_file_model(self, model_id: str) -> bool:
        """Whether ``model_id`` is an available checkpoint-folder model (a readable file)."""
        return any(e.id == model_id for e in self._available_files())

    # -- loading -------------------------------------------------------------------------
    def get(self, model_id: str) -> LoadedModel:
        """The loaded model (loading it, and evicting the least recently used, if needed)."""
        entry = self.resolve(model_id)
        if entry.error is not None and entry.source != "zoo":  # zoo: fetch retries and says why
            raise ModelUnavailable(f"model {model_id!r} is unavailable: {entry.error}")
        with self._lock:
            current = self._loaded.get(model_id)
            if current is not None and current.identity == file_identity(entry.path):
                self._loaded.move_to_end(model_id)
                return current
            load_lock = self._load_locks.setdefault(model_id, threading.Lock())
        with load_lock:
            with self._lock:
                current = self._loaded.get(model_id)
                if current is not None and current.identity == file_identity(entry.path):
                    return current
            loaded = self._load(entry)
            with self._lock:
                self._loaded[model_id] = loaded
                while len(self._loaded) > self.settings.max_loaded_models:
                    evicted, _ = self._loaded.popitem(last=False)
                    log.info(
                        "evicted model %s (DINO_MAX_LOADED_MODELS=%d)",
                        evicted,
                        self.settings.max_loaded_models,
                    )
            return loaded

    def _load(self, entry: ModelEntry) -> LoadedModel:
        s = self.settings
        if entry.source == "zoo":
            try:
                path = zoo.fetch(
                    entry.id,
                    s.cache_dir,
                    s.download_base_url,
                    s.allow_downloads,
                    s.download_timeout_s,
                    s.download_max_s,
                    s.dinov2_download_base_url,
                )
            except ModelUnavailable as exc:
                self._zoo_errors[entry.id] = exc.detail
                raise
            self._zoo_errors.pop(entry.id, None)
        else:
            assert entry.path is not None
            path = entry.path
        try:
            model, info = load_backbone(path, entry.which)
        except Exception as exc:  # noqa: BLE001 - a broken file makes this model unavailable, not the service
            entry.error = f"cannot load {path.name}: {exc}"
            raise ModelUnavailable(f"model {entry.id!r} is unavailable: {entry.error}") from exc
        if hasattr(model, "set_fused_attention"):  # DINOv3's timm Eva is fused by default
            model.set_fused_attention(True)
        model = model.to(self.device).eval().requires_grad_(False)
        log.info(
            "loaded model %s (%s/%d, %s) on %s",
            entry.id,
            info.arch,
            info.patch_size,
            info.source,
            self.device,
        )
        return LoadedModel(entry, model, info, self.device, file_identity(path))

    def note_zoo_error(self, model_id: str, detail: str) -> None:
        """Show a failed zoo download in GET /models (a later request still retries it)."""
        self._zoo_errors[model_id] = detail

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._loaded)
