"""Test images generated with Pillow at test time (no network, no binary files).

``photo()`` uses ``shared/photos/grace_hopper.jpg`` beside the repository when it
is there, and a deterministic synthetic picture otherwise.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import lru_cache
from pathlib import Path

from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageFilter

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "photos"
QUADRANT_COLOURS = ((220, 30, 30), (30, 200, 40), (30, 40, 220), (240, 230, 40))


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int = 7) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))


@lru_cache(maxsize=8)
def _photo(width: int, height: int) -> Image.Image:
    source = PHOTOS / "grace_hopper.jpg"
    if source.is_file():
        with Image.open(source) as original:
            return original.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    size = (width, height)
    r = Image.linear_gradient("L").resize(size)
    g = Image.radial_gradient("L").resize(size)
    b = noise(size).filter(ImageFilter.GaussianBlur(2))
    img = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(img)
    for i in range(12):
        x, y = (i * 37) % width, (i * 53) % height
        draw.ellipse((x, y, x + width // 5, y + height // 6), outline=(255 - i * 20, i * 20, 90))
    grain = Image.merge("RGB", (noise(size, 1), noise(size, 2), noise(size, 3)))
    return Image.blend(img, grain, 0.15)


def photo(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like RGB picture (a copy: callers may modify it)."""
    return _photo(*size).copy()


def quadrants(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """An asymmetric picture: any flip or turn changes it a lot."""
    width, height = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    half_w, half_h = width // 2, height // 2
    boxes = ((0, 0), (half_w, 0), (0, half_h), (half_w, half_h))
    for (x, y), colour in zip(boxes, QUADRANT_COLOURS, strict=True):
        draw.rectangle((x, y, x + half_w - 1, y + half_h - 1), fill=colour)
    return Image.blend(img, photo(size), 0.2)


# Orientation o is displayed by applying this transpose to the stored pixels;
# the stored pixels are the reference turned by the inverse.
_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def oriented_jpeg(orientation: int, quality: int = 90) -> bytes:
    stored = quadrants()
    if orientation != 1:
        stored = stored.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "ExampleCam"
    exif[ExifTags.Base.Model] = "Model 1"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 36.0)
    return exif


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims huge dimensions (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_rgb16(img: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one) from an RGB image."""
    width, height = img.size
    raw = img.tobytes()
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        row = raw[y * width * 3 : (y + 1) * width * 3]
        for value in row:
            rows += struct.pack(">H", value * 257)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows)))
        + _png_chunk(b"IEND", b"")
    )


def rgba_photo(size: tuple[int, int] = (200, 150)) -> Image.Image:
    img = photo(size).convert("RGBA")
    alpha = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize(size)
    img.putalpha(alpha)
    return img


def palette_with_transparency(size: tuple[int, int] = (160, 120)) -> bytes:
    img = photo(size).quantize(64)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size[0] // 2, size[1] // 2), fill=0)
    return encode(img, "PNG", transparency=0)


def animation_frames(size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    frames = []
    for colour in QUADRANT_COLOURS[:3]:
        frame = Image.new("RGB", size, colour)
        ImageDraw.Draw(frame).rectangle((4, 4, 20, 20), fill=(255, 255, 255))
        frames.append(frame)
    return frames


ANIMATION_DURATIONS = [100, 200, 300]


def animated(fmt: str, **params: object) -> bytes:
    first, *rest = animation_frames()
    return encode(
        first, fmt, save_all=True, append_images=rest, duration=ANIMATION_DURATIONS,
        loop=0, **params,
    )


def ycck_jpeg(quality: int = 90) -> bytes:
    """A YCCK JPEG: Pillow cannot write one, so take a CMYK JPEG and set its
    Adobe APP14 colour transform to 2 (YCCK); libjpeg then decodes the
    components as YCCK and converts them to CMYK, as for a real YCCK file."""
    data = bytearray(encode(photo().convert("CMYK"), "JPEG", quality=quality))
    at = data.find(b"\xff\xeeAdobe")
    if at < 0:
        at = data.find(b"Adobe") - 4
    transform = at + 4 + 11  # marker(2) + length(2) + "Adobe" version flags0 flags1
    assert data[at:at + 2] == b"\xff\xee" and data[transform] in (0, 1, 2)
    data[transform] = 2
    return bytes(data)
