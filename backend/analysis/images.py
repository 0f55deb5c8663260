"""Safe image decoding and the model's preprocessing (resize, patch-multiple crop, normalise).

Limits are checked from the header before any pixel is decoded, so decompression bombs
never allocate. Only the common raster formats are opened (never EPS, PDF or other
formats that call external programs).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import BadImage, BadRequest, NotAnImage, TooLarge

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
RESIZE_MODES: tuple[str, ...] = ("keep_aspect", "square")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Our own DINO_MAX_PIXELS check replaces PIL's warning; thread-safe to set once here.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass
class Prepared:
    """One image ready for the model: the normalised tensor and the RGB image it shows."""

    tensor: torch.Tensor  # 1, 3, h, w
    image: Image.Image  # RGB, w x h, what the model saw (before normalisation)
    resized_size: tuple[int, int]  # (w, h) after resize, before the crop


def open_checked(data: bytes, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    """Open ``data`` lazily and check byte and pixel limits before decoding any pixel."""
    if not data:
        raise BadImage(f"{what} is empty (0 bytes); send a JPEG, PNG, WebP, GIF, BMP or TIFF file")
    if len(data) > max_bytes:
        raise TooLarge(
            f"{what} is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.1f} MB",
            code="upload_too_large",
        )
    try:
        img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise TooLarge(
            f"{what} declares too many pixels ({exc}); the limit is {max_pixels} pixels",
            code="too_many_pixels",
        ) from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage(
            f"{what} is not a recognised image; send one of {', '.join(ALLOWED_FORMATS)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a broken header is a client error
        raise BadImage(f"{what} has a corrupt header ({exc}); send a valid image file") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise BadImage(f"{what} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(
            f"{what} is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels",
            code="too_many_pixels",
        )
    return img


def _wide_to_uint8(arr: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """16-bit / 32-bit / float grey -> 0..255 (integers by their bit range, floats min-max)."""
    is_float = np.issubdtype(arr.dtype, np.floating)
    arr = arr.astype(np.float64)
    if is_float:
        lo = float(np.nanmin(arr))
        hi = float(np.nanmax(arr))
        arr = (np.nan_to_num(arr, nan=lo) - lo) / max(hi - lo, 1e-12)
    else:
        arr = arr / (65535.0 if sixteen_bit or arr.max(initial=0) > 255 else 255.0)
    return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode: alpha composited on white, 16-bit and float scaled, CMYK converted."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in _WIDE_MODES:
        return Image.fromarray(
            _wide_to_uint8(np.asarray(img), img.mode.startswith("I;16"))
        ).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    """Bytes -> upright RGB image (first frame, EXIF applied), or a 4xx error saying why."""
    img = open_checked(data, max_bytes, max_pixels, what)
    try:
        img.seek(0)
        img.load()
        upright = ImageOps.exif_transpose(img) or img
        return _to_rgb(upright)
    except Image.DecompressionBombError as exc:  # pragma: no cover - guarded by open_checked
        raise TooLarge(f"{what} has too many pixels: {exc}", code="too_many_pixels") from exc
    except MemoryError as exc:
        raise TooLarge(
            f"{what} needs too much memory to decode; send a smaller image", code="too_many_pixels"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean a broken file
        raise BadImage(
            f"{what} is truncated or corrupt ({exc}); send a complete image file"
        ) from exc


def resized_size(width: int, height: int, image_size: int, resize: str) -> tuple[int, int]:
    """(w, h) after the resize: square, or short side ``image_size`` (torchvision's rounding)."""
    if resize == "square":
        return image_size, image_size
    if resize != "keep_aspect":
        raise BadRequest(f"unknown resize {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    if width <= height:
        return image_size, int(image_size * height / width)
    return int(image_size * width / height), image_size


def check_processed_size(
    width: int, height: int, image_size: int, resize: str, patch: int, max_side: int
) -> None:
    """Reject parameters that give no patch or an image larger than ``max_side`` squared."""
    if image_size < patch:
        raise BadRequest(
            f"image_size {image_size} is smaller than one patch of {patch} px; "
            f"use image_size between {patch} and {max_side}",
            code="image_size_too_small",
        )
    rw, rh = resized_size(width, height, image_size, resize)
    if rw < patch or rh < patch:
        raise BadRequest(
            f"the resized image {rw}x{rh} is smaller than one patch of {patch} px; "
            f"use a larger image_size or resize=square",
            code="image_size_too_small",
        )
    if rw * rh > max_side * max_side:
        raise TooLarge(
            f"the resized image would be {rw}x{rh} = {rw * rh} pixels; the limit is "
            f"{max_side}x{max_side} (DINO_MAX_IMAGE_SIZE); "
            "use a smaller image_size or resize=square",
            code="processed_too_large",
        )


def prepare(
    img: Image.Image,
    image_size: int,
    resize: str,
    patch: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Prepared:
    """Resize (bilinear, like the authors' ``transforms.Resize`` in both modes), crop, normalise."""
    rw, rh = resized_size(img.width, img.height, image_size, resize)
    resized = img.resize((rw, rh), Image.Resampling.BILINEAR) if (rw, rh) != img.size else img
    w = rw - rw % patch
    h = rh - rh % patch
    cropped = resized.crop((0, 0, w, h)) if (w, h) != (rw, rh) else resized
    arr = np.asarray(cropped, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)
    return Prepared(tensor=tensor, image=cropped, resized_size=(rw, rh))


def decode_mask(
    data: bytes, max_bytes: int, max_pixels: int, image_wh: tuple[int, int]
) -> Image.Image:
    """A ground-truth mask as mode "L": same size as the image, or same aspect (1 % tolerance)."""
    mask = decode_image(data, max_bytes, max_pixels, what="gt_mask").convert("L")
    (mw, mh), (iw, ih) = mask.size, image_wh
    if (mw, mh) != (iw, ih) and abs(mw * ih - mh * iw) > 0.01 * iw * mh:
        raise BadRequest(
            f"gt_mask is {mw}x{mh} but the image is {iw}x{ih}; send a mask of the same size "
            "or the same aspect ratio",
            code="bad_gt_mask",
        )
    return mask


def prepare_mask(mask: Image.Image, prepared: Prepared) -> np.ndarray:
    """Boolean ``h x w`` mask aligned with ``prepared.image`` (nearest resize, same crop, > 127)."""
    resized = mask.resize(prepared.resized_size, Image.Resampling.NEAREST)
    w, h = prepared.image.size
    return np.asarray(resized.crop((0, 0, w, h))) > 127
