"""Generated clips for tests and benchmarks: a textured square moving over a textured background."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def clip_frames(frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """``frames x h x w x 3`` uint8: a checkered square crossing a smooth background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack(
        [60 + 40 * np.sin(xx / 6.0), 90 + 50 * np.cos(yy / 9.0), 70 + 20 * np.sin((xx + yy) / 11)],
        -1,
    )
    background = np.clip(background + rng.normal(0, 6, size=(height, width, 3)), 0, 255)
    side = max(4, min(width, height) // 3)
    square = np.where(
        ((np.arange(side)[:, None] // 3 + np.arange(side)[None, :] // 3) % 2)[..., None] == 1,
        np.array([250, 220, 40]),
        np.array([200, 40, 40]),
    )
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        x = int(round((width - side) * i / max(frames - 1, 1)))
        y = (height - side) // 2 + int(round(0.2 * (height - side) * np.sin(i / 4.0)))
        frame[y : y + side, x : x + side] = square
        out[i] = frame.astype(np.uint8)
    return out


def write_clip(
    path: Path,
    frames: int = 24,
    width: int = 64,
    height: int = 48,
    fps: int = 12,
    codec: str | None = None,
) -> np.ndarray:
    """Write the clip to ``path``; the suffix picks the container (.mp4, .gif, .webm, .mov)."""
    suffix = Path(path).suffix.lower()
    codec = codec or {".gif": "gif", ".webm": "libvpx-vp9"}.get(suffix, "libx264")
    pix_fmt = {"gif": "rgb8", "libvpx-vp9": "yuv420p"}.get(codec, "yuv420p")
    data = clip_frames(frames, width, height)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i, arr in enumerate(data):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return data


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 8000) -> None:
    """A short sine tone in a WAV-like container with no video stream."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
