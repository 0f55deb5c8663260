"""The service side of ``/match`` and ``/objects``: decode, prepare, one model step, cache.

Matching caches each image's patch features (keyed like the attention maps, plus layer, facet
and precision), so a new query or ``top_k`` on the same pair runs no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from backend.analysis.discovery import (
    MatchResult,
    ObjectsResult,
    PatchFeatures,
    discover_objects,
    match,
    patch_features,
)
from backend.analysis.discovery_params import MatchParams, ObjectsParams
from backend.analysis.images import (
    Prepared,
    check_processed_size,
    decode_image,
    decode_mask,
    prepare,
)
from backend.analysis.map_cache import image_digest
from backend.analysis.service import AttentionService
from backend.errors import InvalidParameter
from backend.models.registry import LoadedModel


@dataclass
class CachedFeatures:
    """A map-cache value: one image's features and its processed picture."""

    features: PatchFeatures
    picture: np.ndarray  # the processed image, (h, w, 3) uint8

    @property
    def nbytes(self) -> int:
        return self.features.nbytes() + self.picture.nbytes


class DiscoveryEngine:
    """Matching and object discovery on top of the attention service's models and model step."""

    def __init__(self, service: AttentionService) -> None:
        self.service = service

    def _prepared(self, loaded: LoadedModel, params, image: bytes) -> tuple[Prepared, tuple]:
        s = self.service.settings
        patch = loaded.info.patch_size
        with self.service.decode_slot():
            img = decode_image(image, s.max_upload_bytes, s.max_pixels)
        check_processed_size(
            img.width, img.height, params.image_size, params.resize, patch, s.max_image_size
        )
        prepared = prepare(
            img, params.image_size, params.resize, patch, loaded.info.mean, loaded.info.std
        )
        return prepared, img.size

    def features(self, loaded: LoadedModel, params: MatchParams, image: bytes) -> CachedFeatures:
        """The image's patch features of ``params.layer`` / ``facet``, from the cache if there."""
        layer = self.service.resolve_layer(loaded, params.layer)
        key = (
            "features",
            loaded.entry.id,
            loaded.identity,
            image_digest(image),
            params.image_size,
            params.resize,
            layer,
            params.facet,
            params.precision,
        )
        hit = self.service.cache.get(key)
        if hit is not None:
            return hit
        with self.service.single_flight.hold(key):
            hit = self.service.cache.get(key)
            if hit is not None:
                return hit
            prepared, _ = self._prepared(loaded, params, image)

            def step(model: torch.nn.Module, device: torch.device) -> PatchFeatures:
                return patch_features(model, prepared.tensor.to(device), layer, params.facet)

            feats = self.service.step.run(loaded, step, params.precision)
            value = CachedFeatures(feats, np.asarray(prepared.image))
            self.service.cache.put(key, value)
            return value

    def match(
        self, params: MatchParams, image_a: bytes, image_b: bytes
    ) -> tuple[LoadedModel, MatchParams, MatchResult, CachedFeatures, CachedFeatures]:
        loaded = self.service.model_for(params)
        params = self.service.with_defaults(loaded, params)
        a = self.features(loaded, params, image_a)
        b = self.features(loaded, params, image_b)
        if params.query is not None:
            rows, cols = a.features.grid
            if not (0 <= params.query[0] < rows and 0 <= params.query[1] < cols):
                raise InvalidParameter(
                    f"query {list(params.query)} is outside image A's {rows}x{cols} patch grid; "
                    f"use 0 <= row < {rows} and 0 <= col < {cols}"
                )
        return loaded, params, match(a.features, b.features, params.query, params.top_k), a, b

    def objects(
        self, params: ObjectsParams, image: bytes, gt_mask: bytes | None
    ) -> tuple[LoadedModel, ObjectsParams, ObjectsResult, np.ndarray, tuple[float, float]]:
        """LOST or TokenCut on one image; also the processed picture and the uploaded / resized
        scale (x, y), to draw the box on the picture."""
        loaded = self.service.model_for(params)
        params = self.service.with_defaults(loaded, params)
        prepared, source_size = self._prepared(loaded, params, image)
        s = self.service.settings
        gt = None
        if gt_mask is not None:
            mask = decode_mask(gt_mask, s.max_upload_bytes, s.max_pixels, source_size)
            gt = np.asarray(mask.resize(source_size, Image.Resampling.NEAREST)) > 127

        def step(model: torch.nn.Module, device: torch.device) -> ObjectsResult:
            return discover_objects(
                model,
                prepared.tensor.to(device),
                prepared.resized_size,  # the crop is top-left anchored: scale by the resize
                source_size,
                params.method,
                params.k_patches,
                gt,
            )

        try:
            result = self.service.step.run(loaded, step, params.precision)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from exc
        scale = (
            source_size[0] / prepared.resized_size[0],
            source_size[1] / prepared.resized_size[1],
        )
        return loaded, params, result, np.asarray(prepared.image), scale
