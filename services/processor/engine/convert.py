"""Pixel-mode normalisation for each output format, keeping colour right.

Every source mode is first brought to one of ``L``, ``LA``, ``RGB``, ``RGBA`` or
``CMYK``; alpha that is fully opaque is dropped.  When the colour family changes
(CMYK or grey to RGB) and the source carries an ICC profile, the pixels are
transformed through that profile to sRGB and the sRGB profile is embedded;
without a profile the plain Pillow conversion is used and no profile is written.
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache

from PIL import Image, ImageCms

from shared.errors import ImageRejected

log = logging.getLogger(__name__)

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@lru_cache(maxsize=1)
def srgb_profile_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _sixteen_to_l(img: Image.Image) -> Image.Image:
    wide = img if img.mode == "I" else img.convert("I")
    lo, hi = wide.getextrema()
    if img.mode == "I" and isinstance(hi, int) and hi <= 255 and lo >= 0:
        return wide.convert("L")
    return wide.point(lambda v: v * (1 / 257)).convert("L")


def normalise_mode(img: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, LA, RGB, RGBA or CMYK."""
    mode = img.mode
    transparency = "transparency" in img.info
    try:
        if mode in ("L", "RGB", "CMYK", "LA", "RGBA"):
            if transparency and mode in ("L", "RGB"):
                return img.convert("LA" if mode == "L" else "RGBA")
            return img
        if mode == "1":
            return img.convert("L")
        if mode in _SIXTEEN_BIT:
            return _sixteen_to_l(img)
        if mode in ("P", "PA"):
            palette_mode = img.palette.mode if img.palette is not None else "RGB"
            has_alpha = mode == "PA" or transparency or palette_mode == "RGBA"
            return img.convert("RGBA" if has_alpha else "RGB")
        if mode in ("La",):
            return img.convert("LA")
        if mode in ("RGBa", "RGBX", "YCbCr", "HSV", "LAB"):
            return img.convert("RGBA" if mode == "RGBa" else "RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected(f"cannot convert mode {mode}: {exc}", code="unsupported_mode") from exc
    raise ImageRejected(f"pixel mode {mode} is not supported", code="unsupported_mode")


def drop_opaque_alpha(img: Image.Image) -> Image.Image:
    """Remove an alpha channel that is 255 everywhere."""
    if img.mode not in ("LA", "RGBA"):
        return img
    lo, _hi = img.getchannel("A").getextrema()
    if lo == 255:
        return img.convert("L" if img.mode == "LA" else "RGB")
    return img


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("LA", "RGBA")


def _profile_space(icc: bytes) -> str | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return str(profile.profile.xcolor_space).strip()
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        return None


def to_rgb_family(img: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """L/LA/CMYK -> RGB/RGBA, through the ICC profile when there is one."""
    if img.mode in ("RGB", "RGBA"):
        return img, icc
    target = "RGBA" if has_alpha(img) else "RGB"
    if icc is not None:
        space = _profile_space(icc)
        base_mode = "CMYK" if img.mode == "CMYK" else "L"
        expected = "CMYK" if base_mode == "CMYK" else "GRAY"
        if space == expected:
            try:
                base = img if img.mode == base_mode else img.convert(base_mode)
                converted = ImageCms.profileToProfile(
                    base,
                    ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                    ImageCms.createProfile("sRGB"),
                    outputMode="RGB",
                )
                if converted is not None:
                    if target == "RGBA":
                        converted.putalpha(img.getchannel("A"))
                    return converted, srgb_profile_bytes()
            except (ImageCms.PyCMSError, OSError, ValueError) as exc:
                log.info("ICC transform to sRGB failed (%s); converting without it", exc)
    return img.convert(target), None


def flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite translucent pixels onto white (for outputs without alpha)."""
    if not has_alpha(img):
        return img
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    return white.convert("RGB" if img.mode == "RGBA" else "L")


def for_output(
    img: Image.Image, fmt: str, icc: bytes | None
) -> tuple[Image.Image, bytes | None]:
    """Pixels in a mode the output format accepts, with the matching ICC profile."""
    if fmt == "JPEG":
        img = flatten_alpha(img)
        return img, icc  # L, RGB and CMYK are all valid JPEG modes
    if fmt == "PNG":
        if img.mode == "CMYK":
            return to_rgb_family(img, icc)
        return img, icc  # L, LA, RGB, RGBA
    # WebP and AVIF: RGB or RGBA only.
    return to_rgb_family(img, icc)
