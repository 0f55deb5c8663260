"""Running one video job: decode, model and encode overlap in three threads.

* a decoder thread samples frames (``video_io.sample_frames``) and preprocesses each exactly as
  ``POST /attention`` does (``images.prepare``);
* the job's thread stacks them into batches of ``DINO_VIDEO_BATCH`` frames; each batch waits for
  an inference slot (it retries instead of failing with busy) and gives the slot back at once, so
  image requests interleave between batches;
* an encoder thread renders each frame's picture and writes the result and source MP4s.

Results are written under temporary names and renamed into place when the job is done.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from backend.analysis.images import Prepared, prepare
from backend.analysis.inference import derive_maps
from backend.analysis.model_step import Cancelled
from backend.errors import ServiceError, exception_text
from backend.models.registry import LoadedModel
from backend.video.io import Mp4Writer, sample_frames
from backend.video.jobs import Job, JobState, JobStore, write_atomic
from backend.video.params import VideoParams
from backend.video.render import render_frame

log = logging.getLogger(__name__)
RESULT_FILES = {"mp4": "result.mp4", "npz": "result.npz", "json": "result.json"}
SOURCE_FILE = "source.mp4"
_END = object()


@dataclass
class FrameMaps:
    """What the model produced for the sampled frames, in order."""

    timestamps: list[float] = field(default_factory=list)
    attentions: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    coverage: list[list[float]] = field(default_factory=list)


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` on a bounded queue; False (not put) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise Cancelled
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class FrameAnalyser(Protocol):
    """What the runner uses of the analysis room (``AttentionService`` provides it)."""

    def model_for(self, params: VideoParams) -> LoadedModel: ...

    def batch_cls_attention(
        self,
        loaded: LoadedModel,
        tensor: torch.Tensor,
        layer: int,
        cancel: threading.Event | None = None,
        precision: str | None = None,
    ) -> torch.Tensor: ...


class VideoJobRunner:
    """Callable run by the job store's worker for each job."""

    def __init__(self, service: FrameAnalyser, store: JobStore, batch: int) -> None:
        self.service = service
        self.store = store
        self.batch = batch

    def __call__(self, job: Job) -> None:
        folder = self.store.folder(job)
        try:
            params = VideoParams.model_validate(job.params["request"])
            loaded = self.service.model_for(params)
            self.store.start(job, int(job.params["frames_estimate"]))
            maps = self._pipeline(job, params, loaded, folder)
            self._write_results(job, params, loaded, maps, folder)
        except Cancelled:
            self.store.finish(job, JobState.CANCELLED)
        except ServiceError as exc:
            self.store.finish(job, JobState.FAILED, exc.detail)
        except Exception as exc:  # noqa: BLE001 - any fault ends the job and frees the worker
            log.exception("video job %s failed", job.id)
            reason = f"{type(exc).__name__}: {exception_text(exc)}"
            self.store.finish(job, JobState.FAILED, f"the job failed: {reason}")
        finally:
            for tmp in folder.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)
        if job.state == JobState.RUNNING:
            job.frames_total = job.frames_done
            self.store.finish(job, JobState.DONE)

    # -- the three stages --------------------------------------------------------------
    def _decode(self, job: Job, params: VideoParams, loaded: LoadedModel, out: queue.Queue) -> None:
        info = loaded.info
        stop = job.cancel
        src = self.store.folder(job) / job.input_name
        cap = int(job.params["max_frames"])
        try:
            for i, (t, image) in enumerate(
                sample_frames(
                    src,
                    float(job.params["fps_used"]),
                    cap + 1,
                    max_pixels=job.params.get("max_pixels"),  # every frame, not only the first
                )
            ):
                if i == cap:
                    job.truncated = True
                    break
                if stop.is_set():
                    return  # cancelled: no further frame is decoded (the file is closed)
                prepared = prepare(
                    image, params.image_size, params.resize, info.patch_size, info.mean, info.std
                )
                if not _put(out, (t, image, prepared), stop):
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the job's thread, which reports it
            _put(out, exc, stop)
            return
        _put(out, _END, stop)

    def _encode(
        self, job: Job, params: VideoParams, patch: int, inbox: queue.Queue, errors: list
    ) -> None:
        folder = self.store.folder(job)
        fps = float(job.params["fps_used"])
        try:
            with (
                Mp4Writer(folder / ".result.mp4.tmp", fps) as result,
                Mp4Writer(folder / ".source.mp4.tmp", fps) as source,
            ):
                while (item := _get(inbox, job.cancel)) is not _END:
                    image, prepared, attn, masks = item
                    frame = np.asarray(prepared.image)
                    untrained = job.params.get("trained") is False
                    result.write(render_frame(params.render, frame, attn, masks, patch, untrained))
                    source.write(np.asarray(image))
                    job.frames_done += 1  # per frame, once it is analysed and encoded
                    job.frames_total = max(job.frames_total, job.frames_done)
        except Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - reported by the job's thread
            log.exception("encoding video job %s failed", job.id)
            errors.append(exc)
            job.cancel.set()

    def _pipeline(
        self, job: Job, params: VideoParams, loaded: LoadedModel, folder: Path
    ) -> FrameMaps:
        decoded: queue.Queue = queue.Queue(maxsize=2 * self.batch)
        to_encode: queue.Queue = queue.Queue(maxsize=2 * self.batch)
        errors: list[Exception] = []
        decoder = threading.Thread(
            target=self._decode,
            args=(job, params, loaded, decoded),
            name=f"video-decode-{job.id}",
            daemon=True,
        )
        encoder = threading.Thread(
            target=self._encode,
            args=(job, params, loaded.info.patch_size, to_encode, errors),
            name=f"video-encode-{job.id}",
            daemon=True,
        )
        decoder.start()
        encoder.start()
        maps = FrameMaps()
        try:
            self._model_loop(job, params, loaded, decoded, to_encode, maps)
            _put(to_encode, _END, job.cancel)
        except Cancelled:
            if not errors:  # cancelled by the user; an encoder failure is reported below
                raise
        except BaseException:
            job.cancel.set()  # a failed model loop stops the decoder and the encoder too
            raise
        finally:
            if errors:
                job.cancel.set()
            decoder.join()
            encoder.join()
        if errors:
            reason = exception_text(errors[0])
            raise ServiceError(f"encoding the result failed: {reason}", code="encode_failed")
        if job.cancel.is_set():
            raise Cancelled
        (folder / ".result.mp4.tmp").replace(folder / RESULT_FILES["mp4"])
        (folder / ".source.mp4.tmp").replace(folder / SOURCE_FILE)
        return maps

    def _model_loop(
        self,
        job: Job,
        params: VideoParams,
        loaded: LoadedModel,
        inbox: queue.Queue,
        outbox: queue.Queue,
        maps: FrameMaps,
    ) -> None:
        pending: list[tuple[float, Any, Prepared]] = []
        done = False
        while not done:
            item = _get(inbox, job.cancel)
            if isinstance(item, Exception):
                raise (
                    item
                    if isinstance(item, ServiceError)
                    else ServiceError(
                        f"decoding the video failed: {exception_text(item)}", code="decode_failed"
                    )
                )
            done = item is _END
            if job.cancel.is_set():  # between batches: a cancelled job stops here
                raise Cancelled
            if not done:
                same_size = not pending or pending[0][2].tensor.shape == item[2].tensor.shape
                if same_size:
                    pending.append(item)
                if len(pending) < self.batch and same_size:
                    continue
                self._run_batch(job, params, loaded, pending, outbox, maps)
                pending = [] if same_size else [item]
            elif pending:
                self._run_batch(job, params, loaded, pending, outbox, maps)

    def _run_batch(
        self,
        job: Job,
        params: VideoParams,
        loaded: LoadedModel,
        frames: list,
        outbox: queue.Queue,
        maps: FrameMaps,
    ) -> None:
        tensor = torch.cat([p.tensor for _, _, p in frames])
        layer = int(job.params["layer_used"])
        attn = self.service.batch_cls_attention(
            loaded, tensor, layer, cancel=job.cancel, precision=params.precision
        )
        for (t, image, prepared), a in zip(frames, attn, strict=True):
            derived = derive_maps(a, params.threshold)
            maps.timestamps.append(t)
            maps.attentions.append(derived.attentions)
            maps.masks.append(derived.masks)
            maps.coverage.append(derived.coverage)
            _put(outbox, (image, prepared, derived.attentions, derived.masks), job.cancel)

    # -- results -----------------------------------------------------------------------
    def _write_results(
        self, job: Job, params: VideoParams, loaded: LoadedModel, maps: FrameMaps, folder: Path
    ) -> None:
        attentions = np.stack(maps.attentions).astype(np.float32)
        meta = {
            **job.params,
            "model": loaded.entry.id,
            "patch_size": loaded.info.patch_size,
            "num_heads": int(attentions.shape[1]),
            "grid": list(attentions.shape[2:]),
            "frames": len(maps.timestamps),
            "truncated": job.truncated,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            attentions=attentions,
            masks=np.stack(maps.masks),
            mean_attention=attentions.mean(1),
            timestamps=np.asarray(maps.timestamps, dtype=np.float64),
            meta=np.asarray(json.dumps(meta)),
        )
        write_atomic(folder / RESULT_FILES["npz"], buf.getvalue())
        summary = {**meta, "timestamps": maps.timestamps, "coverage": maps.coverage}
        write_atomic(folder / RESULT_FILES["json"], json.dumps(summary).encode())
