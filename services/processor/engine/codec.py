"""``compress``: bytes in, re-encoded bytes at half the estimated quality out.

Output format per source (``force_format`` overrides it):

==================  ==============================================================
source              output
==================  ==============================================================
JPEG (and MPO)      JPEG, same mode (L / RGB / CMYK), progressive kept, chroma
                    subsampling kept
PNG, GIF, BMP, TIFF opaque -> JPEG; with (non-opaque) alpha -> WebP (lossy + alpha)
WebP                WebP
AVIF                AVIF
animated GIF/PNG/   animated WebP with every frame and its duration (frames
WebP/AVIF           summed against ``max_pixels``); first frame only when a
                    non-WebP format is forced
==================  ==============================================================
"""

from __future__ import annotations

import io
import logging

from PIL import Image, JpegImagePlugin

from shared.errors import ImageRejected

from .convert import drop_opaque_alpha, for_output, has_alpha, normalise_mode
from .decode import (
    bomb_guard,
    check_pixels,
    decode_error,
    load_pixels,
    open_image,
    source_format,
)
from .metadata import (
    apply_orientation,
    has_metadata,
    orientation,
    save_metadata,
    strip_jpeg_metadata,
)
from .options import OUTPUT_FORMATS, SOURCE_FORMATS, CompressResult, EngineOptions
from .quality import QualityEstimate, estimate_quality, target_quality

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = EngineOptions()
_LOSSLESS_SOURCES = frozenset({"PNG", "GIF", "BMP", "TIFF"})


def default_output_format(src: str, alpha: bool) -> str:
    if src in _LOSSLESS_SOURCES:
        return "WEBP" if alpha else "JPEG"
    if src in OUTPUT_FORMATS:
        return src
    return "JPEG"


def _jpeg_params(img: Image.Image, progressive: bool, sampling: int) -> dict[str, object]:
    params: dict[str, object] = {"optimize": True}
    if progressive:
        params["progressive"] = True
    if img.mode == "RGB" and sampling in (0, 1, 2):
        params["subsampling"] = sampling
    return params


def _encode(img: Image.Image, fmt: str, quality: int, extra: dict[str, object]) -> bytes:
    params: dict[str, object] = dict(extra)
    if fmt == "PNG":
        params["optimize"] = True
    else:
        params["quality"] = quality
    buf = io.BytesIO()
    try:
        img.save(buf, fmt, **params)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise
    except (OSError, SyntaxError, EOFError) as exc:
        raise decode_error(exc) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise ImageRejected(f"cannot encode as {fmt}: {exc}", code="encode_failed") from exc
    return buf.getvalue()


def _animation_params(img: Image.Image, frames: int, icc: bytes | None) -> dict[str, object]:
    durations: list[int] = []
    try:
        for index in range(frames):
            img.seek(index)
            duration = img.info.get("duration", 100)
            durations.append(int(duration) if isinstance(duration, int | float) else 100)
        img.seek(0)
    except (OSError, SyntaxError, EOFError, ValueError) as exc:
        raise decode_error(exc) from exc
    params: dict[str, object] = {
        "save_all": True,
        "duration": durations,
        "loop": int(img.info.get("loop", 0) or 0),
        "method": 4,
    }
    if icc is not None:
        params["icc_profile"] = icc
    return params


def _original_to_keep(
    data: bytes, src: str, img: Image.Image, orient: int, options: EngineOptions
) -> bytes | None:
    """The input bytes as they may be stored, honouring the metadata policy."""
    if options.keep_metadata:
        return data
    if src == "JPEG":
        return strip_jpeg_metadata(data, orient)
    return None if has_metadata(img) else data


def compress(data: bytes, options: EngineOptions = DEFAULT_OPTIONS) -> CompressResult:
    """Re-encode one image at half its estimated quality (see module docs).

    Raises ``ImageRejected`` (bad bytes) or ``PolicyViolation`` (limits), each with
    a stable ``code``.  Pure CPU; the CPU-time limit is enforced by ``EnginePool``.
    """
    with bomb_guard():
        img = open_image(data)
        try:
            return _compress_opened(img, data, options)
        finally:
            img.close()


def _compress_opened(img: Image.Image, data: bytes, options: EngineOptions) -> CompressResult:
    src = source_format(img)
    frames = check_pixels(img, options.max_pixels)
    estimate = estimate_quality(img, data)  # tables read before any decode or transform
    quality = target_quality(estimate.quality, options.min_quality)
    icc = img.info.get("icc_profile") or None

    if frames > 1 and options.force_format in (None, "WEBP"):
        if icc is not None and img.mode in ("CMYK", "L", "LA", "1"):
            icc = None  # frames are decoded to RGB(A); a non-RGB profile no longer applies
        params = _animation_params(img, frames, icc)
        params.update(save_metadata(img, options.keep_metadata))
        encoded = _encode(img, "WEBP", quality, params)
        return _finish(data, encoded, "WEBP", img, img.size, estimate, quality, frames, options)

    progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    sampling = JpegImagePlugin.get_sampling(img) if src == "JPEG" else -1
    load_pixels(img)
    upright = apply_orientation(img)
    meta = save_metadata(upright, options.keep_metadata)
    pixels = drop_opaque_alpha(normalise_mode(upright))
    fmt = options.force_format or default_output_format(src, has_alpha(pixels))
    pixels, icc_out = for_output(pixels, fmt, icc)
    extra: dict[str, object] = dict(meta)
    if icc_out is not None:
        extra["icc_profile"] = icc_out
    if fmt == "JPEG":
        extra.update(_jpeg_params(pixels, progressive and src == "JPEG", sampling))
    elif fmt == "WEBP":
        extra["method"] = 4
    encoded = _encode(pixels, fmt, quality, extra)
    size = pixels.size
    return _finish(data, encoded, fmt, img, size, estimate, quality, 1, options)


def _finish(
    data: bytes,
    encoded: bytes,
    fmt: str,
    img: Image.Image,
    size: tuple[int, int],
    estimate: QualityEstimate,
    quality: int,
    frames: int,
    options: EngineOptions,
) -> CompressResult:
    src = source_format(img)
    bytes_in = len(data)
    if options.keep_smaller_original and len(encoded) >= bytes_in:
        original = _original_to_keep(data, src, img, orientation(img), options)
        if original is not None and len(original) <= len(encoded):
            content_type, extension = SOURCE_FORMATS[src]
            log.debug("re-encode (%s bytes) not smaller than input (%s); keeping input",
                      len(encoded), bytes_in)
            return CompressResult(
                data=original, format=src, content_type=content_type, extension=extension,
                quality_in=estimate.quality, quality_out=estimate.quality,
                quality_method=estimate.method, bytes_in=bytes_in, bytes_out=len(original),
                width=size[0], height=size[1], kept_original=True, source_format=src,
                frames=frames,
            )
        log.debug("input has metadata that cannot be stripped; using the larger re-encode")
    content_type, extension = OUTPUT_FORMATS[fmt]
    return CompressResult(
        data=encoded, format=fmt, content_type=content_type, extension=extension,
        quality_in=estimate.quality, quality_out=100 if fmt == "PNG" else quality,
        quality_method=estimate.method, bytes_in=bytes_in, bytes_out=len(encoded),
        width=size[0], height=size[1], kept_original=False, source_format=src,
        frames=frames,
    )

