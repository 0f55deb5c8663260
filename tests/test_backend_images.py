"""Safe decoding (limits before decode, every mode) and preprocessing geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend.analysis.images import (
    check_processed_size,
    decode_image,
    decode_mask,
    prepare,
    resized_size,
)
from backend.errors import BadImage, BadRequest, NotAnImage, TooLarge
from tests.service_helpers import image_bytes, zero_png
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

MB = 2**20


def _enc(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    return decode_image(data, 5 * MB, 10_000_000)


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 255, 128))
    out = np.asarray(_decode(_enc(img)))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)
    assert abs(int(out[0, 1, 0]) - 127) <= 1 and out[0, 1, 2] == 255  # half blue over white


def test_palette_with_transparency_and_la():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    out = np.asarray(_decode(_enc(pal, transparency=0)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 200, 30)
    la = Image.new("LA", (2, 2), (0, 0))
    assert tuple(np.asarray(_decode(_enc(la)))[0, 0]) == (255, 255, 255)


def test_cmyk_jpeg():
    rgb = Image.new("RGB", (16, 16), (200, 40, 40))
    out = np.asarray(_decode(_enc(rgb.convert("CMYK"), "JPEG", quality=95))).astype(int)
    assert np.abs(out[8, 8] - [200, 40, 40]).max() < 12


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, np.uint16)
    arr[0, 0] = 65535
    out = np.asarray(_decode(_enc(Image.fromarray(arr))))
    assert out[0, 0, 0] == 255 and abs(int(out[4, 4, 0]) - 128) <= 1


def test_float_tiff_min_max():
    arr = np.linspace(-1, 3, 16, dtype=np.float32).reshape(4, 4)
    out = np.asarray(_decode(_enc(Image.fromarray(arr), "TIFF")))
    assert out[0, 0, 0] == 0 and out[3, 3, 0] == 255


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(_decode(buf.getvalue()))
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = _decode(_enc(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[2, 10].mean() > 200 and arr[-3, 10].mean() < 50  # left strip is now on top


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats(fmt):
    assert _decode(image_bytes(20, 10, fmt=fmt)).size == (20, 10)


def test_limits_checked_before_decoding():
    bomb = zero_png(5000, 5000)  # 25 Mpx in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(TooLarge, match="25000000 pixels"):
        decode_image(bomb, MB, 10_000_000)
    with pytest.raises(TooLarge, match="limit is 0.0 MB|limit is"):
        decode_image(image_bytes(64, 64), 100, 10_000_000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadImage),
        (b"GIF89a-but-not-really", BadImage),
        (b"%PDF-1.4 hello", NotAnImage),
        (b"\x00" * 100, NotAnImage),
    ],
)
def test_broken_inputs(data, error):
    with pytest.raises((BadImage, NotAnImage)) as info:
        _decode(data)
    assert isinstance(info.value, (error, BadImage, NotAnImage))
    assert 400 <= info.value.status < 500


def test_truncated_png_and_jpeg():
    for fmt in ("PNG", "JPEG"):
        data = image_bytes(64, 64, fmt=fmt)
        with pytest.raises(BadImage, match="truncated or corrupt"):
            _decode(data[: len(data) * 2 // 3])


def test_eps_and_other_decoders_are_refused():
    with pytest.raises(NotAnImage):
        _decode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")


def test_resize_geometry_and_crop():
    assert resized_size(640, 480, 240, "keep_aspect") == (320, 240)
    assert resized_size(100, 301, 50, "keep_aspect") == (50, 150)
    assert resized_size(640, 480, 100, "square") == (100, 100)
    img = Image.new("RGB", (300, 200), (124, 116, 104))
    p = prepare(img, 100, "keep_aspect", 16, IMAGENET_MEAN, IMAGENET_STD)
    assert (
        p.resized_size == (150, 100)
        and p.image.size == (144, 96)
        and p.tensor.shape == (1, 3, 96, 144)
    )
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    assert torch.allclose(p.tensor[0, :, 5, 5], expected.float(), atol=1e-5)


def test_processed_size_checks():
    with pytest.raises(BadRequest, match="smaller than one patch"):
        check_processed_size(100, 100, 8, "square", 16, 2048)
    check_processed_size(20, 2000, 16, "keep_aspect", 16, 2048)  # 16 x 1600: one patch wide is fine
    with pytest.raises(TooLarge, match="DINO_MAX_IMAGE_SIZE"):
        check_processed_size(10, 5000, 480, "keep_aspect", 16, 2048)
    check_processed_size(10, 5000, 480, "square", 16, 2048)


def test_gt_mask_size_rules():
    same_aspect = _enc(Image.new("L", (32, 16)))
    assert decode_mask(same_aspect, MB, 10**6, (64, 32)).size == (32, 16)
    with pytest.raises(BadRequest, match="gt_mask is 16x16 but the image is 64x32"):
        decode_mask(_enc(Image.new("L", (16, 16))), MB, 10**6, (64, 32))
