"""The service object: settings, model registry, inference engine, metrics, default model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from backend import zoo
from backend.errors import InvalidParameter, ModelUnavailable, ServiceError
from backend.images import Prepared, check_processed_size, decode_image, decode_mask, prepare, prepare_mask
from backend.inference import InferenceEngine, MapSet, derive_maps, head_ious, render_overlays
from backend.metrics import ServiceMetrics
from backend.placeholder import PLACEHOLDER_ID, ensure_placeholder
from backend.registry import LoadedModel, ModelRegistry
from backend.schemas import AttentionParams
from backend.settings import SHIPPED_DEFAULT_ID, ZOO_DEFAULT_ID, Settings

log = logging.getLogger(__name__)


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


class AttentionService:
    """Owns the registry and engine; ``start()`` picks and loads the default model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.registry = ModelRegistry(settings)
        self.engine = InferenceEngine(settings.max_concurrency, settings.queue_timeout_s, settings.precision)
        self.default_model: str | None = None
        self.default_error: str | None = None
        self.ready = False

    def choose_default(self) -> str:
        """The default model id: the first of

        1. ``DINO_DEFAULT_MODEL`` when set (not checked here: ``start()`` reports a bad one);
        2. with downloads allowed, ``dino_vits16`` from the zoo when cached or downloadable;
        3. the shipped model ``SHIPPED_DEFAULT_ID`` when its file is in the checkpoint folder and readable;
        4. the newest available file in the checkpoint folder;
        5. the random-init placeholder (created on first use).
        """
        s = self.settings
        if s.default_model:
            return s.default_model
        if s.allow_downloads and self._zoo_default_ready():
            return ZOO_DEFAULT_ID
        if self.registry.has_file_model(SHIPPED_DEFAULT_ID):
            return SHIPPED_DEFAULT_ID
        newest = self.registry.newest_file_model()
        if newest:
            return newest
        ensure_placeholder(s.cache_dir)
        return PLACEHOLDER_ID

    def _zoo_default_ready(self) -> bool:
        """Fetch (or find cached) the zoo default; a failure is logged and shown in GET /models."""
        s = self.settings
        try:
            zoo.fetch(ZOO_DEFAULT_ID, s.cache_dir, s.download_base_url, True, s.download_timeout_s, s.download_max_s)
            return True
        except ModelUnavailable as exc:
            log.warning("falling back from %s: %s", ZOO_DEFAULT_ID, exc.detail)
            self.registry.note_zoo_error(ZOO_DEFAULT_ID, exc.detail)
            return False

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
            raise ModelUnavailable(f"no default model is loaded ({self.default_error}); pass model=<id> "
                                   "from GET /models", code="no_default_model")
        loaded = self.registry.get(model_id)
        self.metrics.loaded_models.set(len(self.registry.loaded_ids()))
        return loaded

    def analyse(self, loaded: LoadedModel, params: AttentionParams, image: bytes, gt_mask: bytes | None) -> Analysis:
        """Decode, preprocess, run the model, derive masks / IoU / overlays; 4xx on bad input."""
        s, patch, t0 = self.settings, loaded.info.patch_size, time.perf_counter()
        if params.image_size > s.max_image_size:
            raise InvalidParameter(f"image_size {params.image_size} is above the limit; use {patch} to "
                                   f"{s.max_image_size}")
        img = decode_image(image, s.max_upload_bytes, s.max_pixels)
        check_processed_size(img.width, img.height, params.image_size, params.resize, patch, s.max_image_size)
        gt = None if gt_mask is None else decode_mask(gt_mask, s.max_upload_bytes, s.max_pixels, img.size)
        t1 = time.perf_counter()
        prepared = prepare(img, params.image_size, params.resize, patch, loaded.info.mean, loaded.info.std)
        gt_bool = None if gt is None else prepare_mask(gt, prepared)
        t2 = time.perf_counter()
        with self.engine.slot():
            self.metrics.in_flight.inc()
            try:
                attn = self.engine.cls_attention(loaded.model, prepared.tensor, loaded.device)
            finally:
                self.metrics.in_flight.dec()
        t3 = time.perf_counter()
        self.metrics.inference.labels(loaded.entry.id).observe(t3 - t2)
        maps = derive_maps(attn, params.threshold)
        out = Analysis(loaded, params, prepared, maps)
        out.iou = None if gt_bool is None else head_ious(maps.masks, gt_bool, patch)
        out.overlays = render_overlays(prepared.image, maps, patch) if params.overlays else None
        t4 = time.perf_counter()
        out.timings_ms = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "model": (t3 - t2) * 1e3,
                          "postprocess": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3}
        return out


def best_head(iou: list[float]) -> int:
    return int(np.argmax(iou))
