"""Estimate the quality setting an image was encoded with.

JPEG quality is read from the quantization tables (``img.quantization``, which
Pillow fills in natural 8x8 order when the file is opened, before any decode or
transform).  Methods, tried in order:

1. ``standard_tables_exact``: the tables equal the IJG (JPEG Annex K) tables
   scaled by libjpeg's quality formula for some quality 1-100, with or without
   the 8-bit ("force baseline") clamp.
2. ``imagemagick``: the sum/hash method ImageMagick uses for ``identify -format
   %Q``: a "hash" of a few table entries and the sum of all entries are compared
   with the same figures for the standard tables at every quality.  The reference
   figures are computed here from the standard tables rather than stored.
3. ``least_squares``: the quality 1-100 whose scaled standard tables are nearest
   to the image's tables in the least-squares sense (sum of squared differences
   over all 64 entries of each table).  This suits non-standard tables (e.g. tuned
   encoders) that are still roughly proportional to the standard ones.
4. ``assumed``: :data:`ASSUMED_LOSSY_QUALITY` when nothing can be read.

Non-JPEG sources: lossless formats (PNG, GIF, BMP, TIFF, lossless WebP) count as
quality 100 (``lossless_source``); lossy WebP and AVIF do not record their
quality in a form Pillow exposes, so :data:`ASSUMED_LOSSY_QUALITY` is assumed
(``assumed``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

log = logging.getLogger(__name__)

ASSUMED_LOSSY_QUALITY = 75
LOSSLESS_FORMATS = frozenset({"PNG", "GIF", "BMP", "TIFF"})

# JPEG standard (ITU T.81 Annex K) tables, natural (row-major) order.
STD_LUMA: tuple[int, ...] = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
STD_CHROMA: tuple[int, ...] = (
    (17, 18, 24, 47) + (99,) * 4
    + (18, 21, 26, 66) + (99,) * 4
    + (24, 26, 56) + (99,) * 5
    + (47, 66) + (99,) * 6
    + (99,) * 32
)


@dataclass(frozen=True)
class QualityEstimate:
    quality: int
    method: str


def quality_scale(quality: int) -> int:
    """libjpeg's mapping from a 1-100 quality to a percentage scale factor."""
    quality = min(max(quality, 1), 100)
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def scaled_table(base: Sequence[int], quality: int, baseline: bool = True) -> tuple[int, ...]:
    """A base table scaled as libjpeg's ``jpeg_add_quant_table`` does."""
    scale = quality_scale(quality)
    top = 255 if baseline else 32767
    return tuple(min(max((b * scale + 50) // 100, 1), top) for b in base)


@lru_cache(maxsize=1)
def _exact_index() -> dict[tuple[tuple[int, ...], tuple[int, ...]], int]:
    """(luma, chroma) tables -> quality.  Later (higher) qualities never collide."""
    index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    for baseline in (False, True):  # clamped variants win where they coincide
        for q in range(1, 101):
            key = (scaled_table(STD_LUMA, q, baseline), scaled_table(STD_CHROMA, q, baseline))
            index[key] = q
    return index


def _exact_match(tables: Mapping[int, Sequence[int]]) -> int | None:
    luma = tuple(tables[0])
    chroma_tables = [tuple(t) for k, t in tables.items() if k != 0]
    for (std_l, std_c), q in _exact_index().items():
        if luma == std_l and all(c == std_c for c in chroma_tables):
            return q
    return None


@lru_cache(maxsize=1)
def _imagemagick_reference() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per quality 1..100: (hash, sum) for the two-table and one-table cases."""
    two: list[tuple[int, int]] = []
    one: list[tuple[int, int]] = []
    for q in range(1, 101):
        luma = scaled_table(STD_LUMA, q)
        chroma = scaled_table(STD_CHROMA, q)
        two.append((luma[2] + luma[53] + chroma[0] + chroma[63], sum(luma) + sum(chroma)))
        one.append((luma[2] + luma[53], sum(luma)))
    return two, one


def _imagemagick(tables: Mapping[int, Sequence[int]]) -> int | None:
    """ImageMagick's estimate: walk from quality 1 upwards while both figures of the
    image are below the reference; the first quality where they are not gives the
    answer (exact if both are <=, accepted as approximate above quality 50)."""
    luma = tables[0]
    total = sum(sum(t) for t in tables.values())
    two, one = _imagemagick_reference()
    if 1 in tables:
        chroma = tables[1]
        qvalue = luma[2] + luma[53] + chroma[0] + chroma[63]
        reference = two
    else:
        qvalue = luma[2] + luma[53]
        reference = one
    for i, (ref_hash, ref_sum) in enumerate(reference):
        if qvalue < ref_hash and total < ref_sum:
            continue
        if (qvalue <= ref_hash and total <= ref_sum) or i >= 50:
            return i + 1
        return None
    return None


def _least_squares(tables: Mapping[int, Sequence[int]]) -> int:
    """The quality whose scaled standard tables are nearest in the least-squares sense
    (sum of squared differences over every entry of every table; table 0 is compared
    with the luma table, the others with the chroma table).  Scaling includes the
    8-bit clamp when every entry fits in 8 bits, so clamped low-quality tables fit."""
    baseline = all(v <= 255 for t in tables.values() for v in t)
    best_q, best_err = 1, -1
    for q in range(1, 101):
        luma = scaled_table(STD_LUMA, q, baseline)
        chroma = scaled_table(STD_CHROMA, q, baseline)
        err = 0
        for key, table in tables.items():
            ref = luma if key == 0 else chroma
            err += sum((t - r) * (t - r) for t, r in zip(table, ref, strict=True))
        if best_err < 0 or err < best_err:
            best_q, best_err = q, err
    return best_q


def estimate_jpeg_tables(tables: Mapping[int, Sequence[int]]) -> QualityEstimate:
    """Estimate quality from natural-order quantization tables keyed by table id."""
    usable = {k: list(v) for k, v in tables.items() if len(v) == 64}
    if 0 not in usable:
        return QualityEstimate(ASSUMED_LOSSY_QUALITY, "assumed")
    q = _exact_match(usable)
    if q is not None:
        return QualityEstimate(q, "standard_tables_exact")
    q = _imagemagick(usable)
    if q is not None:
        return QualityEstimate(q, "imagemagick")
    return QualityEstimate(_least_squares(usable), "least_squares")


def webp_is_lossless(data: bytes) -> bool:
    """True when a WebP file's (first) image is VP8L-coded.  Scans the RIFF chunks
    (including ANMF frame payloads) for the first VP8/VP8L bitstream chunk."""
    if len(data) < 16 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    pos = 12
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        if fourcc == b"ANMF":
            pos += 8 + 16  # frame header, then the frame's own chunks follow
            continue
        pos += 8 + size + (size & 1)
    return False


def _source_bytes(img: Image.Image) -> bytes | None:
    fp = getattr(img, "fp", None)
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()
    return None


def estimate_quality(img: Image.Image, data: bytes | None = None) -> QualityEstimate:
    """Estimate the original quality of an opened (not yet transformed) image.

    ``data`` (the raw file bytes) is only needed for WebP, to tell lossless from
    lossy; when omitted it is taken from the image's BytesIO if there is one.
    """
    fmt = "JPEG" if img.format == "MPO" else (img.format or "")
    if fmt == "JPEG":
        tables = getattr(img, "quantization", None) or {}
        return estimate_jpeg_tables(tables)
    if fmt in LOSSLESS_FORMATS:
        return QualityEstimate(100, "lossless_source")
    if fmt == "WEBP":
        raw = data if data is not None else _source_bytes(img)
        if raw is not None and webp_is_lossless(raw):
            return QualityEstimate(100, "lossless_source")
        return QualityEstimate(ASSUMED_LOSSY_QUALITY, "assumed")
    log.debug("no quality estimator for format %s; assuming %s", fmt, ASSUMED_LOSSY_QUALITY)
    return QualityEstimate(ASSUMED_LOSSY_QUALITY, "assumed")


def target_quality(estimate: int, min_quality: int, cap: int = 95) -> int:
    """Half the estimate, rounded half-up (``int(q / 2 + 0.5)``), within [floor, cap]."""
    half = int(estimate / 2 + 0.5)
    return max(min(half, cap), min(min_quality, cap), 1)
