"""The one entry through which every route and the video runner run a model.

:meth:`ModelStep.run` owns what a model step needs around the torch call: a bounded inference
slot (fail with 503 after ``queue_timeout_s``, or wait until free for background jobs), the
in-flight gauge, ``inference_mode``, the precision and the inference-time histogram.

Precisions (:mod:`trainer.model.inference_precision`): ``fp32``; ``bf16`` autocast; ``int8``, a
dynamically quantised copy of the model made once per loaded model and kept beside it; ``auto``,
the fastest this machine runs natively. A mode the machine would only emulate is refused.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import torch
from torch import nn

from backend.errors import BadRequest, Busy
from trainer.model.device import autocast_context
from trainer.model.inference_precision import (
    INFERENCE_PRECISIONS,
    UnsupportedPrecision,
    int8_copy,
    resolve_inference_precision,
)

T = TypeVar("T")
STEP_PRECISIONS = ("auto", *INFERENCE_PRECISIONS)


class Cancelled(Exception):
    """A background job was cancelled while it waited for an inference slot."""


class StepMetrics(Protocol):
    """The two metrics a model step records (``backend.api.metrics.ServiceMetrics`` has both)."""

    in_flight: object
    inference: object


class HasId(Protocol):
    id: str


class RunnableModel(Protocol):
    """What a model step needs of a loaded model: the network, its device and its entry's id."""

    model: nn.Module
    device: torch.device
    entry: HasId


class ModelStep:
    """Bounded, measured, precision-aware model calls."""

    def __init__(
        self,
        max_concurrency: int,
        queue_timeout_s: float,
        precision: str = "fp32",
        metrics: StepMetrics | None = None,
    ) -> None:
        check_precision(precision)
        self.precision = precision
        self.queue_timeout_s = queue_timeout_s
        self.max_concurrency = max_concurrency
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._int8: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
        self._int8_lock = threading.Lock()

    def resolve(self, requested: str | None, device: torch.device) -> str:
        """The precision that will run: ``requested`` (or the default), ``auto`` resolved; 400
        naming the modes this machine runs when it would only be emulated."""
        try:
            return resolve_inference_precision(requested or self.precision, device)
        except UnsupportedPrecision as exc:
            raise BadRequest(str(exc), code="unsupported_precision") from exc

    def network(self, loaded: RunnableModel, precision: str) -> nn.Module:
        """The network that runs ``precision``: the model, or its int8 copy (built once)."""
        if precision != "int8":
            return loaded.model
        with self._int8_lock:
            quantised = self._int8.get(loaded.model)
            if quantised is None:
                quantised = int8_copy(loaded.model)
                self._int8[loaded.model] = quantised
        return quantised

    @contextlib.contextmanager
    def slot(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold one inference slot.

        Without ``cancel`` (a request): 503 with Retry-After when none frees up in time. With
        ``cancel`` (a background job): wait in ``queue_timeout_s`` steps until one is free, or
        raise :class:`Cancelled` once the event is set.
        """
        while not self._slots.acquire(timeout=self.queue_timeout_s):
            if cancel is None:
                raise Busy(
                    f"all {self.max_concurrency} inference slots are busy; retry in a few seconds",
                    headers={"Retry-After": str(max(1, round(self.queue_timeout_s)))},
                )
            if cancel.is_set():
                raise Cancelled
        if self.metrics is not None:
            self.metrics.in_flight.inc()  # type: ignore[attr-defined]
        try:
            yield
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.dec()  # type: ignore[attr-defined]
            self._slots.release()

    def run(
        self,
        loaded: RunnableModel,
        fn: Callable[[nn.Module, torch.device], T],
        precision: str | None = None,
        cancel: threading.Event | None = None,
    ) -> T:
        """``fn(model, device)`` in a slot, under inference mode, in ``precision``.

        ``precision`` is resolved by :meth:`resolve` (None: the service's default).
        """
        precision = self.resolve(precision, loaded.device)
        network = self.network(loaded, precision)
        autocast = "bf16" if precision == "bf16" else "fp32"
        with self.slot(cancel):
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast_context(loaded.device, autocast):
                out = fn(network, loaded.device)
            if self.metrics is not None:
                seconds = time.perf_counter() - t0
                histogram = self.metrics.inference.labels(loaded.entry.id)  # type: ignore[attr-defined]
                histogram.observe(seconds)
        return out


def check_precision(precision: str) -> str:
    """``precision`` when the model step supports it, else ValueError naming the choices."""
    if precision not in STEP_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; choose one of {', '.join(STEP_PRECISIONS)}"
        )
    return precision
