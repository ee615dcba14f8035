"""Opening untrusted bytes safely: format allowlist, sniffing, pixel limits, error codes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

from shared.errors import ImageRejected, PolicyViolation

log = logging.getLogger(__name__)

#: Pillow plugins allowed to parse input.  MPO (multi-picture JPEG from cameras) is
#: opened by the JPEG plugin and treated as JPEG (first picture).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

#: Formats that may carry several frames that we keep as an animation.
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP", "AVIF"})

_ALLOWED_MAGIC: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)

_KNOWN_UNSUPPORTED: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL codestream"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis")


def sniff_unsupported(data: bytes) -> str | None:
    """Name of a recognised but unsupported image format, else None."""
    for magic, name in _KNOWN_UNSUPPORTED:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def looks_allowed(data: bytes) -> bool:
    if data.startswith(_ALLOWED_MAGIC):
        return True
    riff_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return riff_webp or (data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"))


@contextmanager
def bomb_guard() -> Iterator[None]:
    """Turn Pillow's decompression-bomb warning into an error for this call only and
    map both the warning and Pillow's own bomb error to ``too_many_pixels``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PolicyViolation(str(exc), code="too_many_pixels") from exc


def open_image(data: bytes) -> Image.Image:
    """Open (identify, no decode) with the allowlist; reject with a precise code."""
    if not data:
        raise ImageRejected("the body is empty", code="empty_body")
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        name = sniff_unsupported(data)
        if name is not None:
            msg = f"{name} images are not supported"
            raise ImageRejected(msg, code="unsupported_format") from exc
        if looks_allowed(data):
            raise ImageRejected(f"corrupt image header: {exc}", code="decode_failed") from exc
        raise ImageRejected("the body is not an image", code="not_an_image") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"cannot read image header: {exc}", code="decode_failed") from exc


def source_format(img: Image.Image) -> str:
    return "JPEG" if img.format == "MPO" else (img.format or "UNKNOWN")


def frame_count(img: Image.Image) -> int:
    """Frames that will be processed: all of an animation, else one."""
    if source_format(img) in ANIMATED_FORMATS and getattr(img, "is_animated", False):
        return int(getattr(img, "n_frames", 1))
    return 1


def check_pixels(img: Image.Image, max_pixels: int) -> int:
    """Raise ``too_many_pixels`` past the limit; returns the frame count."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("image has no pixels", code="decode_failed")
    per_frame = width * height
    if per_frame > max_pixels:
        raise PolicyViolation(
            f"{width}x{height} = {per_frame} pixels exceeds the limit of {max_pixels}",
            code="too_many_pixels",
        )
    frames = frame_count(img)
    if per_frame * frames > max_pixels:
        raise PolicyViolation(
            f"{frames} frames of {width}x{height} = {per_frame * frames} pixels exceed "
            f"the limit of {max_pixels}",
            code="too_many_pixels",
        )
    return frames


def decode_error(exc: BaseException) -> ImageRejected:
    """Map an exception raised while decoding pixel data to a precise rejection."""
    text = str(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return ImageRejected(f"the image data is truncated: {text}", code="truncated_image")
    return ImageRejected(f"cannot decode the image: {text}", code="decode_failed")


def load_pixels(img: Image.Image) -> None:
    try:
        img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise decode_error(exc) from exc
