"""Quality estimation from JPEG quantization tables, and the output-quality rule."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from services.processor.engine import estimate_jpeg_tables, estimate_quality, target_quality
from services.processor.engine.quality import (
    STD_CHROMA,
    STD_LUMA,
    _imagemagick,
    _least_squares,
    scaled_table,
    webp_is_lossless,
)
from tests import imagecorpus as corpus

SMALL = corpus.photo((32, 32))


def _open_jpeg(**params: object) -> Image.Image:
    return Image.open(io.BytesIO(corpus.encode(SMALL, "JPEG", **params)))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_pillow_quality_is_recovered_exactly(mode: str) -> None:
    img = SMALL.convert(mode)
    recovered = []
    for q in range(1, 101):
        with Image.open(io.BytesIO(corpus.encode(img, "JPEG", quality=q))) as jpeg:
            recovered.append(estimate_quality(jpeg))
    assert [e.quality for e in recovered] == list(range(1, 101))
    assert {e.method for e in recovered} == {"standard_tables_exact"}


def test_unclamped_tables_match_exactly() -> None:
    # 16-bit tables as an encoder without force_baseline writes them at low quality.
    tables = {0: list(scaled_table(STD_LUMA, 5, baseline=False)),
              1: list(scaled_table(STD_CHROMA, 5, baseline=False))}
    assert max(tables[0]) > 255
    assert estimate_jpeg_tables(tables).quality == 5


def _perturbed(q: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [max(1, min(255, round(v * rng.uniform(0.85, 1.15)))) for v in scaled_table(base, q)]
        for base in (STD_LUMA, STD_CHROMA)
    ]


@pytest.mark.parametrize("q", [20, 35, 50, 65, 80, 92])
def test_non_standard_tables_are_estimated_approximately(q: int) -> None:
    qtables = _perturbed(q, seed=q)
    with _open_jpeg(qtables=qtables) as jpeg:
        estimate = estimate_quality(jpeg)
    assert estimate.method in ("imagemagick", "least_squares")
    assert abs(estimate.quality - q) <= 4


def test_odd_tables_fall_back_to_least_squares() -> None:
    # Large entries exactly where ImageMagick's "hash" looks but small ones elsewhere:
    # its walk gets contradictory answers below quality 50 and gives up, and the
    # least-squares fit answers.
    luma, chroma = [12] * 64, [12] * 64
    luma[2] = luma[53] = chroma[0] = chroma[63] = 200
    with _open_jpeg(qtables=[luma, chroma]) as jpeg:
        estimate = estimate_quality(jpeg)
    assert _imagemagick({0: luma, 1: chroma}) is None
    assert estimate.method == "least_squares"
    assert estimate.quality == _least_squares({0: luma, 1: chroma})
    assert 60 <= estimate.quality <= 95


@pytest.mark.parametrize("q", range(1, 101))
def test_imagemagick_method_on_standard_tables(q: int) -> None:
    tables = {0: list(scaled_table(STD_LUMA, q)), 1: list(scaled_table(STD_CHROMA, q))}
    assert _imagemagick(tables) == q
    assert _imagemagick({0: tables[0]}) == q


@pytest.mark.parametrize("q", [5, 25, 50, 75, 95])
def test_least_squares_inverts_the_scaling(q: int) -> None:
    tables = {0: list(scaled_table(STD_LUMA, q)), 1: list(scaled_table(STD_CHROMA, q))}
    assert abs(_least_squares(tables) - q) <= 1


@pytest.mark.parametrize(
    ("estimate", "floor", "expected"),
    [(100, 10, 50), (75, 10, 38), (85, 10, 43), (90, 10, 45), (51, 10, 26),
     (15, 10, 10), (19, 10, 10), (21, 10, 11), (100, 60, 60), (100, 95, 95), (1, 1, 1)],
)
def test_target_quality_rounds_half_up_within_floor_and_cap(
    estimate: int, floor: int, expected: int
) -> None:
    assert target_quality(estimate, floor) == expected


def test_lossless_sources_count_as_100() -> None:
    for fmt in ("PNG", "GIF", "BMP", "TIFF"):
        with Image.open(io.BytesIO(corpus.encode(SMALL, fmt))) as img:
            assert estimate_quality(img).quality == 100
            assert estimate_quality(img).method == "lossless_source"


def test_webp_lossy_is_assumed_and_lossless_is_100() -> None:
    lossy = corpus.encode(SMALL, "WEBP", quality=90)
    lossless = corpus.encode(SMALL, "WEBP", lossless=True)
    assert not webp_is_lossless(lossy)
    assert webp_is_lossless(lossless)
    with Image.open(io.BytesIO(lossy)) as img:
        assert (estimate_quality(img).quality, estimate_quality(img).method) == (75, "assumed")
    with Image.open(io.BytesIO(lossless)) as img:
        assert estimate_quality(img).method == "lossless_source"
    alpha_lossy = corpus.encode(corpus.rgba_photo((32, 32)), "WEBP", quality=90)
    assert not webp_is_lossless(alpha_lossy)
    assert webp_is_lossless(corpus.animated("WEBP", lossless=True))
    assert not webp_is_lossless(corpus.animated("WEBP", quality=80))
