"""Service configuration, read from ``DINO_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_IMAGE_SIZE_SCHEMA = 2048  # the largest image_size any request may name
ZOO_BASE_URL = "https://dl.fbaipublicfiles.com/dino"
DINOV2_ZOO_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"  # DINOv2 zoo URLs are re-rooted here
ZOO_DEFAULT_ID = (
    "dino_vits16"  # the official model preferred as default (when cached or downloadable)
)
SHIPPED_DEFAULT_ID = (
    "dino_vits16_duts"  # the project's model, checkpoints/dino_vits16_duts.safetensors
)


class Settings(BaseSettings):
    """Every knob of the attention service; each field is the env var ``DINO_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DINO_", extra="ignore")

    checkpoint_dir: Path = Path("checkpoints")
    follow_external_symlinks: bool = Field(
        False, description="follow symlinks in checkpoint_dir whose target lies outside it"
    )
    default_model: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "int8"] = "fp32"
    cache_dir: Path = Path(".cache/dino")

    allow_downloads: bool = True
    download_base_url: str = ZOO_BASE_URL
    dinov2_download_base_url: str = DINOV2_ZOO_BASE_URL
    download_timeout_s: float = Field(
        5.0, gt=0, description="socket timeout of one zoo download step"
    )
    download_max_s: float = Field(600.0, gt=0, description="whole-download deadline")

    max_upload_mb: float = Field(20.0, gt=0, description="largest accepted image file")
    max_request_mb: float = Field(100.0, gt=0, description="largest accepted request body")
    max_pixels: int = Field(40_000_000, gt=0, description="largest decoded image (width x height)")
    max_image_size: int = Field(
        MAX_IMAGE_SIZE_SCHEMA, ge=1, description="largest image_size parameter"
    )
    max_batch: int = Field(16, ge=1)

    max_concurrency: int = Field(2, ge=1, description="inferences running at the same time")
    keep_alive_s: float = Field(5.0, gt=0, description="idle connections are closed after this")
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive within this (else 408)"
    )
    stop_grace_s: float = Field(10.0, gt=0, description="SIGTERM: requests may finish this long")
    trusted_proxies: str = Field(
        "", description="comma list of proxy IPs whose X-Forwarded-For is trusted (empty: none)"
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, description="image decodes running at the same time (bounds decode memory)"
    )
    queue_timeout_s: float = Field(
        10.0, ge=0, description="wait for a free slot before answering 503"
    )
    max_loaded_models: int = Field(2, ge=1)
    cache_entries: int = Field(
        32, ge=0, description="computed map sets kept for instant re-threshold (0: off)"
    )
    cache_mb: float = Field(256.0, ge=0, description="byte bound of that cache")

    max_video_mb: float = Field(
        100.0, gt=0, description="largest accepted video upload (POST /attention/video)"
    )
    video_max_frames: int = Field(
        600, ge=1, description="default and largest max_frames of a video job"
    )
    video_max_duration_s: float = Field(60.0, gt=0, description="longest accepted clip")
    video_max_pixels: int = Field(
        3840 * 2160, gt=0, description="largest video frame (width x height)"
    )
    video_jobs_per_client: int = Field(
        2, ge=1, description="queued or running video jobs per client address"
    )
    video_max_jobs: int = Field(
        100, ge=1, description="video jobs kept (any state) before new ones are refused"
    )
    video_job_ttl_s: float = Field(
        3600.0, gt=0, description="finished video jobs and their files expire after this"
    )
    video_batch: int = Field(8, ge=1, description="frames per inference batch of a video job")
    video_workers: int = Field(1, ge=1, description="video jobs processed at the same time")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)
