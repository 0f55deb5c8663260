"""The authors' pretrained DINO and DINOv2 backbones: ids, URLs, and atomic, verified downloads.

DINO files sit at ``<base>/<name>/<name>.pth`` (``DINO_DOWNLOAD_BASE_URL``). DINOv2's path
pattern differs (``dinov2_vits14/dinov2_vits14_reg4_pretrain.pth``), so each DINOv2 entry holds
its full URL; ``DINO_DINOV2_DOWNLOAD_BASE_URL`` re-roots those URLs onto a mirror.

DINOv3's own links are gated (signed URLs sent by e-mail that expire), so its ViTs come from
timm's public Hugging Face copies (``<base>/<hub id>/resolve/main/model.safetensors``, no login);
``DINO_DINOV3_DOWNLOAD_BASE_URL`` (read here, default ``https://huggingface.co/timm``) re-roots
them. A user with the authors' file drops it into the checkpoint folder instead.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backend.errors import ModelUnavailable
from backend.settings import DINOV2_ZOO_BASE_URL, Settings
from trainer.model.checkpoint import CheckpointError, load_backbone

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_MAX_DOWNLOAD_BYTES = 4 << 30  # DINOv3 ViT-H+/16 in float32 is 3.4 GB
_ARCH_NAMES = {
    "vit_tiny": "ViT-Ti",
    "vit_small": "ViT-S",
    "vit_base": "ViT-B",
    "vit_large": "ViT-L",
    "vit_small_plus": "ViT-S+",
    "vit_huge_plus": "ViT-H+",
}
DINOV2_BASE_URL = DINOV2_ZOO_BASE_URL  # the authors' URLs (re-rooted by the setting)
DINOV3_BASE_URL = "https://huggingface.co/timm"
DINOV3_BASE_ENV = "DINO_DINOV3_DOWNLOAD_BASE_URL"


@dataclass(frozen=True)
class ZooModel:
    """One official checkpoint: its file stem on the authors' server and its architecture."""

    name: str
    arch: str
    patch_size: int
    num_heads: int
    family: str = "dino"
    registers: int = 0
    full_url: str | None = None  # DINOv2: the authors' URL (under DINOV2_BASE_URL)
    hub_id: str | None = None  # DINOv3: timm's Hugging Face repository name
    suffix: str = ".pth"

    def url(self, base_url: str, dinov2_base_url: str = DINOV2_BASE_URL) -> str:
        """Download URL: DINO under ``base_url``, DINOv2 re-rooted on ``dinov2_base_url``,
        DINOv3 under ``$DINO_DINOV3_DOWNLOAD_BASE_URL`` (timm's Hugging Face copies)."""
        if self.hub_id is not None:
            base = os.environ.get(DINOV3_BASE_ENV) or DINOV3_BASE_URL
            return f"{base.rstrip('/')}/{self.hub_id}/resolve/main/model.safetensors"
        if self.full_url is not None:
            return dinov2_base_url.rstrip("/") + self.full_url[len(DINOV2_BASE_URL) :]
        return f"{base_url.rstrip('/')}/{self.name}/{self.name}.pth"

    def cache_path(self, cache_dir: Path) -> Path:
        return Path(cache_dir) / f"{self.name}{self.suffix}"

    @property
    def summary(self) -> str:
        """The model card line shown by GET /models and the app."""
        arch = _ARCH_NAMES.get(self.arch, self.arch)
        if self.family == "dinov3":
            return (
                f"DINOv3 weights (Simeoni et al. 2025), {arch}/16, 4 storage tokens, LVD-1689M "
                "(timm's public copy)"
            )
        if self.family == "dinov2":
            regs = f", {self.registers} registers (Darcet et al. 2023)" if self.registers else ""
            return (
                f"Official DINOv2 weights (Oquab et al. 2023), {arch}/{self.patch_size}{regs}, "
                "LVD-142M"
            )
        return f"Official DINO weights (Caron et al. 2021), {arch}/{self.patch_size}, ImageNet-1k"


def _dinov2(size: str, arch: str, heads: int, registers: int) -> ZooModel:
    base = f"dinov2_vit{size}14"
    name = f"{base}_reg{registers}_pretrain" if registers else f"{base}_pretrain"
    return ZooModel(
        name, arch, 14, heads, "dinov2", registers, f"{DINOV2_BASE_URL}/{base}/{name}.pth"
    )


def _dinov3(timm_name: str, arch: str, heads: int) -> ZooModel:
    hub = f"{timm_name}.lvd1689m"
    return ZooModel(hub, arch, 16, heads, "dinov3", 4, hub_id=hub, suffix=".safetensors")


ZOO: dict[str, ZooModel] = {
    "dino_vits16": ZooModel("dino_deitsmall16_pretrain", "vit_small", 16, 6),
    "dino_vits8": ZooModel("dino_deitsmall8_pretrain", "vit_small", 8, 6),
    "dino_vitb16": ZooModel("dino_vitbase16_pretrain", "vit_base", 16, 12),
    "dino_vitb8": ZooModel("dino_vitbase8_pretrain", "vit_base", 8, 12),
    "dinov2_vits14": _dinov2("s", "vit_small", 6, 0),
    "dinov2_vits14_reg": _dinov2("s", "vit_small", 6, 4),
    "dinov2_vitb14": _dinov2("b", "vit_base", 12, 0),
    "dinov2_vitb14_reg": _dinov2("b", "vit_base", 12, 4),
    "dinov3_vits16": _dinov3("vit_small_patch16_dinov3", "vit_small", 6),
    "dinov3_vits16plus": _dinov3("vit_small_plus_patch16_dinov3", "vit_small_plus", 6),
    "dinov3_vitb16": _dinov3("vit_base_patch16_dinov3", "vit_base", 12),
    "dinov3_vitl16": _dinov3("vit_large_patch16_dinov3", "vit_large", 16),
    "dinov3_vith16plus": _dinov3("vit_huge_plus_patch16_dinov3", "vit_huge_plus", 20),
}
_locks: dict[str, threading.Lock] = {name: threading.Lock() for name in ZOO}


def _stream_to(url: str, target: Path, timeout_s: float, deadline_s: float) -> None:
    """Copy ``url`` into ``target``; fail on HTTP errors, a short body, or the deadline."""
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(target, "wb") as out:  # noqa: S310
        expected = int(resp.headers.get("Content-Length") or -1)
        received = 0
        while chunk := resp.read(_CHUNK):
            received += len(chunk)
            if received > _MAX_DOWNLOAD_BYTES:
                raise OSError(f"download exceeds {_MAX_DOWNLOAD_BYTES} bytes")
            if time.monotonic() - start > deadline_s:
                raise TimeoutError(f"download took longer than {deadline_s:.0f} s")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if expected >= 0 and received != expected:
        raise OSError(f"truncated download: got {received} of {expected} bytes")


def _verify(path: Path, model: ZooModel) -> None:
    """Strict load; the architecture must be the one the id promises."""
    backbone, info = load_backbone(path)
    got = (info.family, info.patch_size, info.num_heads, info.registers)
    if got != (model.family, model.patch_size, model.num_heads, model.registers):
        raise CheckpointError(
            f"downloaded file is {info.arch}/{info.patch_size} ({info.family}, {info.registers} "
            f"registers), expected {model.arch}/{model.patch_size} ({model.family}, "
            f"{model.registers} registers)"
        )
    del backbone


def fetch(
    model_id: str,
    cache_dir: Path,
    base_url: str,
    allow: bool,
    timeout_s: float = 5.0,
    deadline_s: float = 600.0,
    dinov2_base_url: str = DINOV2_BASE_URL,
) -> Path:
    """Path of the cached official checkpoint, downloading it first (atomically) if needed.

    Raises :class:`ModelUnavailable` (HTTP 503) when downloads are off or fail.
    """
    model = ZOO[model_id]
    final = model.cache_path(cache_dir)
    if final.exists():
        return final
    if not allow:
        raise ModelUnavailable(
            f"{model_id} is not in the cache ({final.name} in DINO_CACHE_DIR) and downloads are "
            "off (DINO_ALLOW_DOWNLOADS=false); put the file there or allow downloads",
            code="downloads_disabled",
        )
    with _locks[model_id]:
        if final.exists():
            return final
        return _download(
            model_id, model, final, model.url(base_url, dinov2_base_url), timeout_s, deadline_s
        )


def _download(
    model_id: str, model: ZooModel, final: Path, url: str, timeout_s: float, deadline_s: float
) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{model.name}.", suffix=".part" + model.suffix, dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s from %s", model_id, url)
        _stream_to(url, tmp, timeout_s, deadline_s)
        _verify(tmp, model)
        os.replace(tmp, final)
    except BaseException as exc:  # noqa: BLE001 - every failure is one 503 with its reason
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        log.warning("download of %s failed: %s", model_id, exc)
        raise ModelUnavailable(
            f"could not download {model_id} from {url}: {exc}; retry later, or place "
            f"{final.name} in DINO_CACHE_DIR",
            code="download_failed",
        ) from exc
    return final


def fetch_for(settings: Settings, model_id: str, allow: bool | None = None) -> Path:
    """:func:`fetch` with the service's download settings (``allow`` overrides
    ``DINO_ALLOW_DOWNLOADS``): the one call site of every download."""
    return fetch(
        model_id,
        cache_dir=settings.cache_dir,
        base_url=settings.download_base_url,
        allow=settings.allow_downloads if allow is None else allow,
        timeout_s=settings.download_timeout_s,
        deadline_s=settings.download_max_s,
        dinov2_base_url=settings.dinov2_download_base_url,
    )


def url_for(settings: Settings, model_id: str) -> str:
    """The URL :func:`fetch_for` would download ``model_id`` from."""
    return ZOO[model_id].url(settings.download_base_url, settings.dinov2_download_base_url)


def is_network_error(exc: BaseException | None) -> bool:
    """Whether a download failed because the host did not answer (no route, refused, timed
    out), not because of what it sent (an HTTP error status, a bad file)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    if isinstance(exc, urllib.error.URLError):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, socket.gaierror))
