"""Metadata policy: EXIF orientation, ICC profile, and stripping EXIF/XMP.

* EXIF orientation is applied to the pixels (the output carries no orientation
  tag), so the output looks the same way up in every viewer.
* The ICC profile is always kept (converted to sRGB when the colour family changes,
  see convert.py).
* EXIF (camera, GPS, ...), XMP, IPTC and comments are stripped unless
  ``keep_metadata`` is set.  When the original JPEG bytes are kept because the
  re-encode was not smaller, those segments are removed from the original bytes
  without re-encoding (an orientation-only EXIF block is written if needed).
"""

from __future__ import annotations

from PIL import Image, ImageOps

ORIENTATION_TAG = 0x0112

#: JPEG markers whose segments carry removable metadata: APP1 (EXIF, XMP),
#: APP12 (Ducky / picture info), APP13 (Photoshop IRB / IPTC), COM.
_STRIP_MARKERS = frozenset({0xE1, 0xEC, 0xED, 0xFE})
#: Info keys that carry metadata in non-JPEG containers.
_METADATA_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif", "photoshop")


def orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF: treat as upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(img: Image.Image) -> Image.Image:
    """The image turned the right way up (a new image only when a turn is needed)."""
    if orientation(img) == 1:
        return img
    turned = ImageOps.exif_transpose(img)
    return turned if turned is not None else img


def has_metadata(img: Image.Image) -> bool:
    return any(key in img.info for key in _METADATA_KEYS)


def save_metadata(img: Image.Image, keep: bool) -> dict[str, object]:
    """Encoder keyword arguments for EXIF/XMP (ICC is handled with the pixels)."""
    if not keep:
        return {}
    params: dict[str, object] = {}
    try:
        exif = img.getexif()
    except Exception:
        exif = Image.Exif()
    if ORIENTATION_TAG in exif:
        del exif[ORIENTATION_TAG]  # the pixels are already upright
    if len(exif):
        params["exif"] = exif.tobytes()
    xmp = img.info.get("xmp")
    if isinstance(xmp, bytes | str) and xmp:
        params["xmp"] = xmp.encode() if isinstance(xmp, str) else xmp
    return params


def strip_jpeg_metadata(data: bytes, orient: int = 1) -> bytes | None:
    """The JPEG without APP1/APP12/APP13/COM segments, re-adding an orientation-only
    EXIF block when ``orient`` != 1.  None when the marker structure is not
    understood (the caller then does not keep the original)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    out = bytearray(b"\xff\xd8")
    if orient != 1:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orient
        payload = exif.tobytes()
        out += b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += data[pos:]
            return bytes(out)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            return None
        if marker not in _STRIP_MARKERS:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    return None
