"""Video decoding, frame sampling and H.264 encoding with PyAV (its own FFmpeg; no system ffmpeg).

``probe`` checks an uploaded file before a job is queued: 415 when it is not a video the decoder
knows or its container is not one of the allowed video files (mp4/mov, webm/mkv, avi, gif; never
a demuxer that reads other files or URLs, such as ffconcat lists, HLS playlists or image
sequences: FFmpeg refuses every other demuxer before it reads the header), 400 when it is
truncated, has no video stream (audio only) or no decodable frame, 413 when it is too long or its
frames too large. ``sample_frames`` yields ``(timestamp, RGB image)`` at a target rate and checks
every decoded frame, not only the first, against the first frame's size and the pixel limit;
``Mp4Writer`` writes browser-playable H.264 (yuv420p, faststart).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from backend.errors import BadVideo, NotAVideo, TooLarge, exception_text

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".avi")
DEFAULT_FPS_CAP = 30.0
TIME_TOLERANCE_S = 0.01  # container timestamps are rounded (GIF: centiseconds, WebM: ms)
# File signatures of the containers we accept: a file that starts like one but will not open
# is truncated.
_SIGNATURES = (b"GIF87a", b"GIF89a", b"\x1a\x45\xdf\xa3")
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
# The FFmpeg demuxers allowed to open an upload (FFmpeg's own names). Every other demuxer is
# refused by FFmpeg itself (``format_whitelist``), before its header is read.
ALLOWED_DEMUXERS = ("mov", "mp4", "matroska", "webm", "avi", "gif")
_OPEN_OPTIONS = {"format_whitelist": ",".join(ALLOWED_DEMUXERS), "protocol_whitelist": "file"}
_ALLOWED_TEXT = "mp4, mov, webm, mkv, avi or gif"


@dataclass
class VideoInfo:
    """What ``probe`` learned about a clip."""

    width: int
    height: int
    fps: float  # the stream's average rate (frames per second)
    duration_s: float
    frames: (
        int  # the stream's frame count, estimated from duration x rate when the container lacks it
    )
    codec: str
    container: str


def looks_like_video(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) carries a known container signature."""
    avi = head.startswith(b"RIFF") and head[8:12] == b"AVI "
    return avi or head.startswith(_SIGNATURES) or head[4:8] in _ISO_BOXES


def _not_a_video() -> NotAVideo:
    return NotAVideo(
        f"the upload is not a video file the service opens; send an {_ALLOWED_TEXT} file "
        "(playlists such as HLS .m3u8, ffconcat lists, image sequences and other formats are "
        "refused)",
        code="not_a_video",
    )


def _open(path: Path) -> av.container.InputContainer:
    """Open ``path`` with one of :data:`ALLOWED_DEMUXERS` only, reading no other file or URL."""
    try:
        container = av.open(str(path), mode="r", options=dict(_OPEN_OPTIONS))
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(16)
        if looks_like_video(head):
            raise BadVideo(
                f"the video file is truncated or corrupt ({exception_text(exc)}); upload the "
                "complete file",
                code="truncated_video",
            ) from exc
        raise _not_a_video() from exc
    if not set(container.format.name.split(",")) & set(ALLOWED_DEMUXERS):
        container.close()  # FFmpeg honours the whitelist; this is the second lock on the door
        raise _not_a_video()
    return container


def _stream_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def probe(path: Path, max_duration_s: float, max_pixels: int) -> VideoInfo:
    """Open ``path``, check its limits, decode its first frame; 4xx errors say what is wrong."""
    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise BadVideo(
                f"the file has no video stream (streams: {', '.join(kinds)}); an audio-only file "
                "cannot be analysed",
                code="no_video_stream",
            )
        stream = container.streams.video[0]
        width = stream.codec_context.width
        height = stream.codec_context.height
        if width * height > max_pixels:
            raise TooLarge(
                f"the video frames are {width}x{height} = {width * height} pixels; the limit is "
                f"{max_pixels} pixels per frame (DINO_VIDEO_MAX_PIXELS)",
                code="video_too_large",
            )
        duration = _stream_duration(container, stream)
        if duration > max_duration_s:
            raise TooLarge(
                f"the video lasts {duration:.1f} s; the limit is {max_duration_s:.0f} s "
                "(DINO_VIDEO_MAX_DURATION_S); cut it shorter",
                code="video_too_long",
            )
        rate = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS_CAP
        first = _first_frame(container, stream)
        FrameSizeCheck(max_pixels)(0, first.width, first.height)
        frames = stream.frames or max(1, round(duration * rate))
        return VideoInfo(
            width or first.width,
            height or first.height,
            rate,
            duration,
            frames,
            stream.codec_context.name,
            container.format.name,
        )


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise BadVideo(
            f"the video cannot be decoded ({exception_text(exc)}); the file is truncated or "
            "corrupt",
            code="truncated_video",
        ) from exc
    raise BadVideo(
        "the video has no frames; upload a clip with at least one frame", code="zero_frames"
    )


def target_fps(requested: float | None, source_fps: float) -> float:
    """The sampling rate: ``requested``, else the source rate capped at 30 frames/s."""
    return float(requested) if requested else min(source_fps, DEFAULT_FPS_CAP)


class FrameSizeCheck:
    """Every decoded frame keeps the first frame's size and stays within ``max_pixels``.

    A clip whose frames grow later (an MJPEG AVI can change size on any frame) would otherwise
    reach the model at a size no limit checked. :class:`BadVideo` names the frame's index.
    """

    def __init__(self, max_pixels: int | None = None) -> None:
        self.max_pixels = max_pixels
        self.size: tuple[int, int] | None = None

    def __call__(self, index: int, width: int, height: int) -> None:
        """Raise :class:`BadVideo` if decoded frame ``index`` (from 0) is ``width x height``."""
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise BadVideo(
                f"frame {index} of the video is {width}x{height} = {width * height} pixels; the "
                f"limit is {self.max_pixels} pixels per frame (DINO_VIDEO_MAX_PIXELS)",
                code="frame_too_large",
            )
        if self.size is None:
            self.size = (width, height)
        elif (width, height) != self.size:
            first = "x".join(map(str, self.size))
            raise BadVideo(
                f"frame {index} of the video is {width}x{height} but its first frame is {first}; "
                "the frames of a video must keep one size",
                code="frame_size_changed",
            )


def sample_frames(
    path: Path, fps: float, max_frames: int, max_pixels: int | None = None
) -> Iterator[tuple[float, Image.Image]]:
    """``(seconds from the start, RGB frame)`` for the frames nearest the times ``k / fps``.

    A source frame is taken when its timestamp reaches the next sampling time, so ``fps`` at or
    above the source rate keeps every frame. Stops after ``max_frames``. Every decoded frame,
    taken or skipped, passes :class:`FrameSizeCheck` (``max_pixels``: ``None`` checks only that
    the size never changes; ``probe`` checked the first frame's).
    """
    check = FrameSizeCheck(max_pixels)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = None
        taken = 0
        next_t = 0.0
        eps = TIME_TOLERANCE_S
        try:
            for index, frame in enumerate(container.decode(stream)):
                check(index, frame.width, frame.height)
                t = float(frame.time) if frame.time is not None else taken / fps
                start = t if start is None else start
                t -= start
                if t + eps < next_t:
                    continue
                yield t, frame.to_image()
                taken += 1
                next_t = (math.floor((t + eps) * fps) + 1) / fps
                if taken >= max_frames:
                    return
        except av.error.FFmpegError as exc:
            if taken == 0:
                raise BadVideo(
                    f"the video cannot be decoded ({exception_text(exc)})", code="truncated_video"
                ) from exc
            log.warning("decoding stopped after %d frames: %s", taken, exception_text(exc))


def even_rgb(frame: np.ndarray) -> np.ndarray:
    """Pad an ``h x w x 3`` uint8 frame by an edge pixel on odd sides (yuv420p needs even)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class Mp4Writer:
    """RGB frames to H.264 yuv420p MP4 at a constant ``fps``, moov atom first (plays early)."""

    def __init__(self, path: Path, fps: float, crf: int = 20) -> None:
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self._container = av.open(
            str(path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        self._stream: av.video.stream.VideoStream | None = None
        self.frames = 0

    def _open_stream(self, width: int, height: int) -> av.video.stream.VideoStream:
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        return stream

    def write(self, rgb: np.ndarray) -> None:
        rgb = even_rgb(np.ascontiguousarray(rgb, dtype=np.uint8))
        if self._stream is None:
            self._stream = self._open_stream(rgb.shape[1], rgb.shape[0])
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
