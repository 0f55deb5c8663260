"""Which models exist (checkpoint files, the official zoo, the placeholder) and which are loaded.

Ids: a file's name without its extension (the full name when two files share a stem).
Training checkpoints serve their ``teacher`` under the plain id and their ``student``
under ``<id>:student``. Every entry carries a one-line model card ``summary`` (a file's
safetensors ``extra["summary"]``, a fixed line for the zoo and the placeholder, else None).
Loading is lazy, cached LRU-style (``DINO_MAX_LOADED_MODELS``) and thread-safe; a file that
cannot be parsed is listed as unavailable with its reason.

``GET /models`` says for each model whether its weights are here (``status`` ``ready``). A zoo
model that is not cached is ``download on first use`` (downloads allowed, its host not known to
be unreachable) or ``not downloadable here`` (downloads off, or a download failed); neither is
``available``. Listing never touches the network: what is known of a host comes from the
downloads tried so far.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backend.errors import ModelUnavailable, UnknownModel
from backend.models import zoo
from backend.models.entries import (  # noqa: F401 - also importable from here
    STUDENT_SUFFIX,
    ZOO_LAYOUTS,
    LoadedModel,
    ModelEntry,
    arch_depth,
    default_image_size,
    file_identity,
    inspect_file,
    is_model_folder,
    size_error,
    weights_stat,
)
from backend.models.file_checks import scan_folder
from backend.models.placeholder import (
    PLACEHOLDER_ID,
    PLACEHOLDER_SUMMARY,
    ensure_placeholder,
    placeholder_path,
)
from backend.settings import SHIPPED_DEFAULT_ID, ZOO_DEFAULT_ID, Settings
from trainer.model.checkpoint import (
    load_backbone,
)
from trainer.model.device import pick_device

log = logging.getLogger(__name__)
READY = "ready"
DOWNLOAD_ON_USE = "download on first use"
NOT_DOWNLOADABLE = "not downloadable here"
UNAVAILABLE = "unavailable"
UNTRAINED_REASON = "random weights: structure here comes from colour, not learning"


def trained_fields(trained: bool) -> dict[str, Any]:
    """``trained`` and, for random weights, why their maps still show structure."""
    return {"trained": bool(trained), "trained_reason": None if trained else UNTRAINED_REASON}


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
        self._unreachable: dict[str, str] = {}  # download host -> why the last try failed
        self._refused: list[ModelEntry] = []

    # -- catalogue -----------------------------------------------------------------------
    def _checkpoint_files(self) -> list[Path]:
        s = self.settings  # refused names (directories, links) are listed with their reason
        scan = scan_folder(Path(s.checkpoint_dir), s.follow_external_symlinks)
        self._refused = scan.refused
        return scan.paths

    def _file_entries(self) -> list[ModelEntry]:
        files = self._checkpoint_files()
        stems = [p.stem for p in files]
        out: list[ModelEntry] = []
        seen: dict[Path, tuple[tuple[int, int], list[ModelEntry]]] = {}
        for path in files:
            try:
                stat = weights_stat(path)
            except OSError:  # removed (or replaced) while the folder was scanned: not listed
                continue
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
        return out + self._refused

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

    def public(self, entry: ModelEntry, loaded: bool) -> dict[str, Any]:
        """The ``GET /models`` object of ``entry``: ``available`` only when its weights are here;
        ``status`` a short label, ``error`` a short reason, ``detail`` the full one."""
        status, error, detail = self._availability(entry)
        out = entry.public(loaded)
        out.update(available=status == READY, status=status, error=error, detail=detail)
        out.update(trained_fields(entry.trained))
        return out

    def _availability(self, entry: ModelEntry) -> tuple[str, str | None, str | None]:
        if entry.source != "zoo":
            return (READY, None, None) if entry.error is None else (UNAVAILABLE, entry.error, None)
        assert entry.path is not None
        if entry.path.exists():
            return READY, None, None
        if not self.settings.allow_downloads:
            detail = (
                f"{entry.path.name} is not in the cache and downloads are off "
                "(DINO_ALLOW_DOWNLOADS=false); put the file in DINO_CACHE_DIR or allow downloads"
            )
            return NOT_DOWNLOADABLE, "downloads are off", detail
        failed = self._zoo_errors.get(entry.id) or self._unreachable.get(self._host(entry.id))
        if failed:
            return NOT_DOWNLOADABLE, "the download failed", failed
        return DOWNLOAD_ON_USE, None, None

    def _host(self, model_id: str) -> str:
        return urlsplit(zoo.url_for(self.settings, model_id)).netloc

    def resolve(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id``, or :class:`UnknownModel` (404) listing the valid ids."""
        entries = self.entries()
        for entry in entries:
            if entry.id == model_id:
                return entry
        ids = ", ".join(e.id for e in entries)
        raise UnknownModel(f"unknown model {model_id!r}; choose one of {ids}")

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

    # -- the default model ---------------------------------------------------------------
    def choose_default(self) -> str:
        """The default model id: the first of

        1. ``DINO_DEFAULT_MODEL`` when set (not checked here: ``start()`` reports a bad one);
        2. with downloads allowed, ``dino_vits16`` from the zoo when cached or downloadable;
        3.-5. :meth:`local_default`.
        """
        s = self.settings
        if s.default_model:
            return s.default_model
        if s.allow_downloads and self._zoo_default_ready():
            return ZOO_DEFAULT_ID
        return self.local_default()

    def local_default(self) -> str:
        """Steps 3-5 of the default order, read from the folder alone (no network): the shipped
        model ``SHIPPED_DEFAULT_ID`` when its file is here and readable, else the newest
        available file, else the random-init placeholder (created on first use)."""
        if self.has_file_model(SHIPPED_DEFAULT_ID):
            return SHIPPED_DEFAULT_ID
        newest = self.newest_file_model()
        if newest:
            return newest
        ensure_placeholder(self.settings.cache_dir)
        return PLACEHOLDER_ID

    def _zoo_default_ready(self) -> bool:
        """Fetch (or find cached) the zoo default; a failure is logged and shown in GET /models."""
        try:
            zoo.fetch_for(self.settings, ZOO_DEFAULT_ID, allow=True)
            return True
        except ModelUnavailable as exc:
            log.warning("falling back from %s: %s", ZOO_DEFAULT_ID, exc.detail)
            self.note_zoo_error(ZOO_DEFAULT_ID, exc)
            return False

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
                path = zoo.fetch_for(s, entry.id)
            except ModelUnavailable as exc:
                self.note_zoo_error(entry.id, exc)
                raise
            self._zoo_errors.pop(entry.id, None)
            self._unreachable.pop(self._host(entry.id), None)
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
            info.layout,
            self.device,
        )
        return LoadedModel(entry, model, info, self.device, file_identity(path))

    def note_zoo_error(self, model_id: str, exc: ModelUnavailable) -> None:
        """Show a failed zoo download in GET /models (a later request still retries it); a host
        that did not answer marks every zoo model it serves as not downloadable here."""
        if exc.code == "downloads_disabled":
            return
        self._zoo_errors[model_id] = exc.detail
        if zoo.is_network_error(exc.__cause__):
            self._unreachable[self._host(model_id)] = exc.detail

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._loaded)
