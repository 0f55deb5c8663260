"""Read image files as raw bytes in DataLoader workers and decode them in batches.

With the GPU augmentation (:mod:`trainer.data.gpu_augment`) the workers only read files
(:class:`EncodedImageFolder` + :func:`collate_bytes`); the main process then calls
:func:`decode_jpegs`, which on CUDA decodes the whole batch with nvjpeg
(``torchvision.io.decode_jpeg`` on a list) and on CPU decodes with PIL, using
``Image.draft`` to let the JPEG decoder downscale by 1/2, 1/4 or 1/8 when the image is
much larger than ``draft_size`` (draft keeps both sides >= the requested size).

Undecodable blobs come back as ``None``; :func:`drop_undecoded` removes them and counts them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from trainer.data.dataset import Batch
from trainer.data.images import IMAGE_SUFFIXES, list_images, load_rgb

LOG = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(blob: bytes) -> bool:
    """Whether ``blob`` starts with the JPEG start-of-image marker."""
    return blob[:3] == JPEG_MAGIC


def decode_with_pil(blob: bytes, draft_size: int | None = None) -> torch.Tensor | None:
    """uint8 (3,H,W) RGB tensor of an encoded image, or None when it cannot be decoded."""
    try:
        rgb = load_rgb(io.BytesIO(blob), draft_size)
    except Exception as error:  # any decoder failure (OSError, bomb, ...) means "undecodable"
        LOG.debug("cannot decode image blob of %d bytes: %s", len(blob), error)
        return None
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()


def _decode_jpegs_cuda(blobs: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    jpeg_positions = [i for i, blob in enumerate(blobs) if is_jpeg(blob)]
    encoded = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg_positions]
    decoded: list[torch.Tensor | None] = [None] * len(blobs)
    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device) if encoded else []
        for position, image in zip(jpeg_positions, images, strict=True):
            decoded[position] = image
    except (RuntimeError, ValueError) as error:
        LOG.debug("batched nvjpeg decode failed (%s); decoding one by one", error)
        for position, data in zip(jpeg_positions, encoded, strict=True):
            decoded[position] = _decode_one_cuda(data, device)
    for position, blob in enumerate(blobs):
        if decoded[position] is None:
            image = decode_with_pil(blob)
            decoded[position] = None if image is None else image.to(device, non_blocking=True)
    return decoded


def _decode_one_cuda(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError):
        return None


def decode_jpegs(
    blobs: list[bytes], device: torch.device | str, draft_size: int | None = None
) -> list[torch.Tensor | None]:
    """Decode encoded images to uint8 (3,H,W) RGB tensors on ``device`` (None: undecodable).

    On CUDA the JPEGs are decoded together by nvjpeg, other formats and nvjpeg failures by
    PIL. On CPU PIL decodes, and ``draft_size`` (if given) lets JPEGs decode at reduced size.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _decode_jpegs_cuda(blobs, device)
    decoded = [decode_with_pil(blob, draft_size) for blob in blobs]
    return [None if image is None else image.to(device) for image in decoded]


def drop_undecoded(
    images: list[torch.Tensor | None], indices: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """Remove the ``None`` entries: (images, their dataset indices, how many were dropped)."""
    keep = [i for i, image in enumerate(images) if image is not None]
    dropped = len(images) - len(keep)
    if dropped:
        LOG.warning("skipped %d undecodable image(s) of %d", dropped, len(images))
    return [images[i] for i in keep], indices[keep], dropped


def collate_bytes(items: list[tuple[bytes, int]]) -> Batch:
    """The bytes collate for :class:`EncodedImageFolder`: raw blobs for the decoder.

    Unreadable files (``b""``) are dropped and counted in ``Batch.skipped``; the labels are the
    dataset indices of the blobs kept.
    """
    good = [(blob, index) for blob, index in items if blob]
    indices = torch.tensor([index for _, index in good], dtype=torch.int64)
    return Batch([blob for blob, _ in good], indices, len(items) - len(good))


class EncodedImageFolder(Dataset):
    """Image files as ``(raw file bytes, index)``; an unreadable file gives b"" (which
    :func:`collate_bytes` drops and counts).

    ``source`` is a folder (all images under it, any sub-folder layout, sorted) or an explicit
    list of paths or of ``(path, label)`` samples such as
    ``trainer.data.images.scan_image_folder`` returns.
    """

    def __init__(self, source: str | Path | Sequence[str | Path | tuple[str | Path, int]]) -> None:
        if isinstance(source, (str, Path)):
            self.paths = list_images(source, recursive=True)
        else:
            self.paths = [Path(item[0] if isinstance(item, tuple) else item) for item in source]
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        try:
            return self.paths[index].read_bytes(), index
        except OSError as error:
            LOG.warning("cannot read %s: %s", self.paths[index], error)
            return b"", index
