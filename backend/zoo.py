"""The authors' pretrained DINO backbones: ids, URLs, and atomic, verified downloads."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backend.errors import ModelUnavailable
from trainer.model.checkpoint import CheckpointError, load_backbone

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_MAX_DOWNLOAD_BYTES = 2 << 30
_ARCH_NAMES = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L"}


@dataclass(frozen=True)
class ZooModel:
    """One official checkpoint: its file stem on the authors' server and its architecture."""

    name: str
    arch: str
    patch_size: int
    num_heads: int

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.name}/{self.name}.pth"

    def cache_path(self, cache_dir: Path) -> Path:
        return Path(cache_dir) / f"{self.name}.pth"

    @property
    def summary(self) -> str:
        """The model card line shown by GET /models and the app."""
        arch = _ARCH_NAMES.get(self.arch, self.arch)
        return f"Official DINO weights (Caron et al. 2021), {arch}/{self.patch_size}, ImageNet-1k"


ZOO: dict[str, ZooModel] = {
    "dino_vits16": ZooModel("dino_deitsmall16_pretrain", "vit_small", 16, 6),
    "dino_vits8": ZooModel("dino_deitsmall8_pretrain", "vit_small", 8, 6),
    "dino_vitb16": ZooModel("dino_vitbase16_pretrain", "vit_base", 16, 12),
    "dino_vitb8": ZooModel("dino_vitbase8_pretrain", "vit_base", 8, 12),
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
    if info.patch_size != model.patch_size or info.num_heads != model.num_heads:
        raise CheckpointError(f"downloaded file is {info.arch}/{info.patch_size}, expected "
                              f"{model.arch}/{model.patch_size}")
    del backbone


def fetch(model_id: str, cache_dir: Path, base_url: str, allow: bool, timeout_s: float = 5.0,
          deadline_s: float = 600.0) -> Path:
    """Path of the cached official checkpoint, downloading it first (atomically) if needed.

    Raises :class:`ModelUnavailable` (HTTP 503) when downloads are off or fail.
    """
    model = ZOO[model_id]
    final = model.cache_path(cache_dir)
    if final.exists():
        return final
    if not allow:
        raise ModelUnavailable(f"{model_id} is not in the cache ({final}) and downloads are off "
                               "(DINO_ALLOW_DOWNLOADS=false); put the file there or allow downloads",
                               code="downloads_disabled")
    with _locks[model_id]:
        if final.exists():
            return final
        return _download(model_id, model, final, base_url, timeout_s, deadline_s)


def _download(model_id: str, model: ZooModel, final: Path, base_url: str, timeout_s: float,
              deadline_s: float) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.name}.", suffix=".part.pth", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    url = model.url(base_url)
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
        raise ModelUnavailable(f"could not download {model_id} from {url}: {exc}; retry later, or place "
                               f"{final.name} in {final.parent}", code="download_failed") from exc
    return final
