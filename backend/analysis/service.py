"""The service object: settings, model registry, model step, metrics, default model.

:class:`AttentionService` is the analysis room's public entry: routes and the video runner call
``model_for``, ``analyse``, ``compute_maps`` and ``batch_cls_attention``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel

from backend.analysis.block_maps import RawMaps, compute_block_maps
from backend.analysis.explore import (
    Extras,
    check_heads,
    check_query,
    derive_extras,
    static_overlays,
    threshold_overlays,
)
from backend.analysis.images import (
    Prepared,
    check_processed_size,
    decode_image,
    decode_mask,
    prepare,
    prepare_mask,
)
from backend.analysis.inference import MapSet, derive_maps, head_ious
from backend.analysis.map_cache import MapCache, image_digest
from backend.analysis.metrics import ServiceMetrics
from backend.analysis.model_step import ModelStep
from backend.analysis.params import AttentionParams
from backend.analysis.registers import RegisterAttention, register_attention
from backend.analysis.single_flight import SingleFlight
from backend.errors import Busy, InvalidParameter, ModelUnavailable, ServiceError
from backend.models.registry import LoadedModel, ModelRegistry, default_image_size
from backend.settings import ZOO_DEFAULT_ID, Settings
from trainer.model.block_attention import block_attention, prefix_tokens, resolve_layer

log = logging.getLogger(__name__)
P = TypeVar("P", bound=BaseModel)


@dataclass
class Analysis:
    """Everything one image produced, ready to serialise."""

    loaded: LoadedModel
    params: AttentionParams
    prepared: Prepared
    maps: MapSet
    iou: list[float] | None = None
    overlays: dict[str, object] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    extras: Extras | None = None
    layer: int = -1  # the block shown, 0 .. depth-1
    precision: str = "fp32"  # the precision that ran (or ran when the maps were cached)
    cached: bool = False  # the maps came from the map cache: the model did not run
    registers: RegisterAttention | None = None  # attention that went to register tokens


@dataclass
class CachedImage:
    """A map-cache value: the processed image, its sizes, and what the model computed for it."""

    image: Image.Image
    resized_size: tuple[int, int]
    source_size: tuple[int, int]
    raw: RawMaps
    static: dict[str, dict[str, object]] = field(default_factory=dict)  # overlay format -> pictures

    @property
    def nbytes(self) -> int:
        pictures = sum(
            len(v) if isinstance(v, str) else sum(len(x) for x in v)  # type: ignore[union-attr]
            for by_format in self.static.values()
            for v in by_format.values()
        )
        return self.raw.nbytes + 3 * self.image.width * self.image.height + pictures


class AttentionService:
    """Owns the registry and the model step; ``start()`` picks and loads the default model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.registry = ModelRegistry(settings)
        self.step = ModelStep(
            settings.max_concurrency, settings.queue_timeout_s, settings.precision, self.metrics
        )
        self._default: str | None = None
        self.default_error: str | None = None
        self.ready = False
        self.cache: MapCache[CachedImage] = MapCache(settings.cache_entries, settings.cache_bytes)
        self.single_flight = SingleFlight()
        self._decodes = threading.BoundedSemaphore(settings.max_concurrent_decodes)

    def choose_default(self) -> str:
        """The default model id, in the order of docs/SERVICE.md ("Default model"):
        :meth:`ModelRegistry.choose_default`."""
        return self.registry.choose_default()

    @property
    def default_model(self) -> str | None:
        """The default model. When it came from the checkpoint folder or the placeholder (no
        ``DINO_DEFAULT_MODEL``, not the zoo), the folder is read again, so a file dropped in
        takes its place in the order without a restart."""
        current = self._default
        if current is None or self.settings.default_model or current == ZOO_DEFAULT_ID:
            return current
        chosen = self.registry.local_default()
        if chosen != current:
            log.info("default model is now %s (was %s)", chosen, current)
            self._default = chosen
        return chosen

    @default_model.setter
    def default_model(self, model_id: str | None) -> None:
        self._default = model_id

    def start(self) -> None:
        """Pick and load the default model; failures are reported by /readyz, not raised."""
        try:
            self.default_model = self.choose_default()
            self.registry.get(self.default_model)
            self.ready = True
            log.info("default model %s is ready", self.default_model)
        except ServiceError as exc:
            self.default_error = exc.detail
            log.error("default model not ready: %s", exc.detail)
        self.metrics.loaded_models.set(len(self.registry.loaded_ids()))

    def model_for(self, params: AttentionParams) -> LoadedModel:
        model_id = params.model or self.default_model
        if model_id is None:
            raise ModelUnavailable(
                f"no default model is loaded ({self.default_error}); pass model=<id> "
                "from GET /models",
                code="no_default_model",
            )
        loaded = self.registry.get(model_id)
        self.metrics.loaded_models.set(len(self.registry.loaded_ids()))
        return loaded

    def compute_maps(
        self,
        loaded: LoadedModel,
        tensor: torch.Tensor,
        layer: int = -1,
        query: tuple[int, int] | None = None,
        pca: bool = False,
        precision: str | None = None,
    ) -> RawMaps:
        """Block ``layer``'s attention rows (CLS, and ``query``) for one ``(1, 3, h, w)`` image."""
        index = self.resolve_layer(loaded, layer)

        def step(model: torch.nn.Module, device: torch.device) -> RawMaps:
            x = tensor.to(device, non_blocking=True)
            return compute_block_maps(model, x, index, query, pca)

        return self.step.run(loaded, step, precision)

    def batch_cls_attention(
        self,
        loaded: LoadedModel,
        tensor: torch.Tensor,
        layer: int,
        cancel: threading.Event | None = None,
        precision: str | None = None,
    ) -> torch.Tensor:
        """``(B, heads, gh, gw)`` CLS attention of block ``layer`` for a batch of prepared images.

        The model step of ``POST /attention`` on ``B`` images at once (the video runner's frames);
        the prefix columns (CLS, registers) are dropped. With ``cancel`` it waits for a slot.
        """

        def step(model: torch.nn.Module, device: torch.device) -> torch.Tensor:
            x = tensor.to(device, non_blocking=True)
            return block_attention(model, x, layer, (0,)).attention

        rows = self.step.run(loaded, step, precision, cancel=cancel)
        patch = loaded.model.patch_size
        gh, gw = tensor.shape[-2] // patch, tensor.shape[-1] // patch
        cls = rows[:, :, 0, prefix_tokens(loaded.model) :].float().cpu()
        return cls.reshape(tensor.shape[0], cls.shape[1], gh, gw)

    @contextlib.contextmanager
    def decode_slot(self) -> Iterator[None]:
        """One of ``DINO_MAX_CONCURRENT_DECODES`` image decodes: bounds decode memory; 503 when
        none frees up within ``DINO_QUEUE_TIMEOUT_S``."""
        timeout = self.settings.queue_timeout_s
        if not self._decodes.acquire(timeout=timeout):
            raise Busy(
                "all image decoders are busy; retry in a few seconds",
                headers={"Retry-After": str(max(1, round(timeout)))},
            )
        try:
            yield
        finally:
            self._decodes.release()

    def with_defaults(self, loaded: LoadedModel, params: P) -> P:
        """``params`` with the model's default ``image_size`` when None, and ``precision``
        resolved (the service default, ``auto``) to the mode that will run, or 400."""
        precision = self.step.resolve(params.precision, loaded.device)
        update: dict[str, object] = {"precision": precision}
        if params.image_size is None:
            update["image_size"] = default_image_size(loaded.info.family)  # DINO 480, DINOv2 518
        return params.model_copy(update=update)

    @staticmethod
    def resolve_layer(loaded: LoadedModel, layer: int) -> int:
        """``layer`` as 0 .. depth-1, or 422 stating the valid range."""
        try:
            return resolve_layer(len(loaded.model.blocks), layer)
        except ValueError as exc:
            raise InvalidParameter(f"{exc} (model {loaded.entry.id})") from exc

    def _lookup(
        self,
        loaded: LoadedModel,
        params: AttentionParams,
        key: tuple[object, ...],
        count: bool = True,
    ) -> CachedImage | None:
        def usable(value: CachedImage) -> bool:
            return not params.pca or value.raw.pca_rgb is not None

        hit = self.cache.get(key, usable)
        if count or hit is not None:
            self.metrics.map_cache.labels("hit" if hit else "miss").inc()
        return hit

    def _compute(
        self,
        loaded: LoadedModel,
        params: AttentionParams,
        image: bytes,
        layer: int,
        times: dict[str, float],
    ) -> CachedImage:
        s = self.settings
        patch = loaded.info.patch_size
        t0 = time.perf_counter()
        with self.decode_slot():
            img = decode_image(image, s.max_upload_bytes, s.max_pixels)
        check_processed_size(
            img.width, img.height, params.image_size, params.resize, patch, s.max_image_size
        )
        t1 = time.perf_counter()
        prepared = prepare(
            img, params.image_size, params.resize, patch, loaded.info.mean, loaded.info.std
        )
        w, h = prepared.image.size
        query = check_query(params.query, (h // patch, w // patch))
        t2 = time.perf_counter()
        raw = self.compute_maps(loaded, prepared.tensor, layer, query, params.pca, params.precision)
        times.update(
            decode=(t1 - t0) * 1e3,
            preprocess=(t2 - t1) * 1e3,
            model=(time.perf_counter() - t2) * 1e3,
        )
        return CachedImage(prepared.image, prepared.resized_size, img.size, raw)

    def analyse(
        self, loaded: LoadedModel, params: AttentionParams, image: bytes, gt_mask: bytes | None
    ) -> Analysis:
        """Decode, preprocess, run the model (unless cached), derive masks / IoU / overlays."""
        s = self.settings
        patch = loaded.info.patch_size
        t0 = time.perf_counter()
        params = self.with_defaults(loaded, params)
        if params.image_size > s.max_image_size:
            raise InvalidParameter(
                f"image_size {params.image_size} is above the limit; use {patch} to "
                f"{s.max_image_size}"
            )
        layer = self.resolve_layer(loaded, params.layer)
        heads = check_heads(params.heads, loaded.info.num_heads)
        key = (
            loaded.entry.id,
            loaded.identity,
            image_digest(image),
            params.image_size,
            params.resize,
            layer,
            params.query,
            params.precision,
        )
        times = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
        entry = self._lookup(loaded, params, key)
        cached = entry is not None
        if entry is None:
            with self.single_flight.hold(key):  # identical requests wait for the first one
                entry = self._lookup(loaded, params, key, count=False)
                cached = entry is not None
                if entry is None:
                    entry = self._compute(loaded, params, image, layer, times)
                    self.cache.put(key, entry)
        t1 = time.perf_counter()
        out = self._derive(loaded, params, entry, gt_mask, heads)
        out.layer = layer
        out.cached = cached
        out.precision = params.precision
        if params.overlays and params.format != "npz":  # an npz carries no pictures
            out.overlays = self._overlays(key, entry, out)
        t2 = time.perf_counter()
        post = (t2 - t1) * 1e3 - out.timings_ms.get("overlays", 0.0)
        other = (t1 - t0) * 1e3 - sum(times.values())
        times["decode"] += other  # hashing the image and the cache lookup count as decoding
        out.timings_ms = {
            **times,
            "postprocess": post,
            "overlays": out.timings_ms.get("overlays", 0.0),
            "total": (t2 - t0) * 1e3,
        }
        return out

    def _derive(
        self,
        loaded: LoadedModel,
        params: AttentionParams,
        entry: CachedImage,
        gt_mask: bytes | None,
        heads: list[int],
    ) -> Analysis:
        s = self.settings
        patch = loaded.info.patch_size
        prepared = Prepared(torch.empty(0), entry.image, entry.resized_size)
        gt = (
            None
            if gt_mask is None
            else decode_mask(gt_mask, s.max_upload_bytes, s.max_pixels, entry.source_size)
        )
        maps = derive_maps(torch.from_numpy(entry.raw.cls_maps()), params.threshold)
        out = Analysis(loaded, params, prepared, maps)
        out.extras = derive_extras(entry.raw, heads, params.composite, params.pca)
        out.registers = register_attention(entry.raw)
        out.iou = None if gt is None else head_ious(maps.masks, prepare_mask(gt, prepared), patch)
        return out

    def _overlays(
        self, key: tuple[object, ...], entry: CachedImage, out: Analysis
    ) -> dict[str, object]:
        """The pictures; those a threshold does not change come from the cache after the first."""
        t0 = time.perf_counter()
        fmt = out.params.overlay_format
        patch = out.loaded.info.patch_size
        assert out.extras is not None
        base = np.asarray(entry.image)
        static = entry.static.get(fmt)
        if static is None:
            extras = derive_extras(entry.raw, out.extras.heads, False, True)
            static = static_overlays(base, out.maps, extras, patch, fmt)
            grown = dataclasses.replace(entry, static={**entry.static, fmt: static})
            self.cache.put(key, grown)  # a new value: the cache counts the pictures' bytes
        pictures = {k: v for k, v in static.items() if out.params.pca or k not in ("pca", "pca_fg")}
        pictures.update(threshold_overlays(base, out.maps.masks, out.extras, patch, fmt))
        out.timings_ms["overlays"] = (time.perf_counter() - t0) * 1e3
        return pictures


def best_head(iou: list[float]) -> int:
    return int(np.argmax(iou))
