"""The engine against a generated corpus: every image has its expected outcome."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from PIL import Image, ImageOps

from services.processor.engine import EngineOptions, compress, estimate_quality
from shared.errors import ImageRejected, ImgpipeError, PolicyViolation
from tests import imagecorpus as corpus


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], bytes]
    out_format: str | None = None  # expected format of the re-encode
    error: str | None = None  # expected error code
    error_type: type[ImgpipeError] = ImageRejected
    quality_in: int | None = None
    method: str | None = None
    reference: Callable[[], Image.Image] | None = None  # the image as it should look
    options: EngineOptions = field(default_factory=EngineOptions)
    out_mode: str | None = None  # mode of the decoded output
    frames: int = 1


def _decoded(data: bytes) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(io.BytesIO(data)) as img:
            return ImageOps.exif_transpose(img).convert("RGBA")

    return load


def _jpeg(q: int, **kw: object) -> bytes:
    return corpus.encode(corpus.photo(), "JPEG", quality=q, **kw)


def _case_jpeg_quality(q: int) -> Case:
    data = _jpeg(q)
    return Case(f"jpeg-q{q}", lambda: data, "JPEG", quality_in=q,
                method="standard_tables_exact", reference=_decoded(data), out_mode="RGB")


def _bytes(fn: Callable[[], bytes]) -> Callable[[], bytes]:
    cache: list[bytes] = []

    def get() -> bytes:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def _cases() -> list[Case]:
    cases = [_case_jpeg_quality(q) for q in range(10, 101, 10)]
    progressive = _bytes(lambda: _jpeg(85, progressive=True))
    cmyk = _bytes(lambda: corpus.encode(corpus.photo().convert("CMYK"), "JPEG", quality=90))
    ycck = _bytes(corpus.ycck_jpeg)
    grey = _bytes(lambda: corpus.encode(corpus.photo().convert("L"), "JPEG", quality=85))
    icc = _bytes(lambda: _jpeg(90, icc_profile=corpus.srgb_icc()))
    png_rgba = _bytes(lambda: corpus.encode(corpus.rgba_photo(), "PNG"))
    png_opaque_rgba = _bytes(lambda: corpus.encode(corpus.photo().convert("RGBA"), "PNG"))
    png16_grey = _bytes(
        lambda: corpus.encode(corpus.photo().convert("L").point(lambda v: v * 257, "I")
                              .convert("I;16"), "PNG")
    )
    png16_rgb = _bytes(lambda: corpus.png_rgb16(corpus.photo((120, 90))))
    webp_lossy = _bytes(lambda: corpus.encode(corpus.photo(), "WEBP", quality=80))
    webp_lossless = _bytes(lambda: corpus.encode(corpus.photo(), "WEBP", lossless=True))
    avif = _bytes(lambda: corpus.encode(corpus.photo((128, 96)), "AVIF", quality=80))
    tiff = _bytes(lambda: corpus.encode(corpus.photo(), "TIFF"))
    bmp = _bytes(lambda: corpus.encode(corpus.photo(), "BMP"))
    gif_static = _bytes(lambda: corpus.encode(corpus.photo().quantize(128), "GIF"))
    gif_anim = _bytes(lambda: corpus.animated("GIF"))
    webp_anim = _bytes(lambda: corpus.animated("WEBP", quality=90))
    palette = _bytes(corpus.palette_with_transparency)
    cases += [
        Case("jpeg-progressive", progressive, "JPEG", quality_in=85,
             method="standard_tables_exact", reference=_decoded(progressive()), out_mode="RGB"),
        Case("jpeg-cmyk", cmyk, "JPEG", quality_in=90, method="standard_tables_exact",
             reference=_decoded(cmyk()), out_mode="CMYK"),
        Case("jpeg-ycck", ycck, "JPEG", quality_in=90, method="standard_tables_exact",
             reference=_decoded(ycck()), out_mode="CMYK"),
        Case("jpeg-greyscale", grey, "JPEG", quality_in=85, method="standard_tables_exact",
             reference=_decoded(grey()), out_mode="L"),
        Case("jpeg-icc-profile", icc, "JPEG", quality_in=90, method="standard_tables_exact",
             reference=_decoded(icc()), out_mode="RGB"),
        Case("png-rgba", png_rgba, "WEBP", quality_in=100, method="lossless_source",
             reference=_decoded(png_rgba()), out_mode="RGBA"),
        Case("png-rgba-opaque", png_opaque_rgba, "JPEG", quality_in=100,
             method="lossless_source", reference=_decoded(png_opaque_rgba()), out_mode="RGB"),
        Case("png-palette-transparency", palette, "WEBP", quality_in=100,
             method="lossless_source", reference=_decoded(palette()), out_mode="RGBA"),
        Case("png-16bit-grey", png16_grey, "JPEG", quality_in=100, method="lossless_source",
             reference=lambda: corpus.photo().convert("RGBA").convert("L").convert("RGBA"),
             out_mode="L"),
        Case("png-16bit-rgb", png16_rgb, "JPEG", quality_in=100, method="lossless_source",
             reference=lambda: corpus.photo((120, 90)).convert("RGBA"), out_mode="RGB"),
        Case("webp-lossy", webp_lossy, "WEBP", quality_in=75, method="assumed",
             reference=_decoded(webp_lossy()), out_mode="RGB"),
        Case("webp-lossless", webp_lossless, "WEBP", quality_in=100, method="lossless_source",
             reference=_decoded(webp_lossless()), out_mode="RGB"),
        Case("avif", avif, "AVIF", quality_in=75, method="assumed",
             reference=_decoded(avif()), out_mode="RGB"),
        Case("tiff", tiff, "JPEG", quality_in=100, method="lossless_source",
             reference=_decoded(tiff()), out_mode="RGB"),
        Case("bmp", bmp, "JPEG", quality_in=100, method="lossless_source",
             reference=_decoded(bmp()), out_mode="RGB"),
        Case("gif-static", gif_static, "JPEG", quality_in=100, method="lossless_source",
             reference=_decoded(gif_static()), out_mode="RGB"),
        Case("gif-animated", gif_anim, "WEBP", quality_in=100, method="lossless_source",
             reference=_decoded(gif_anim()), frames=3),
        Case("webp-animated", webp_anim, "WEBP", quality_in=75, method="assumed",
             reference=_decoded(webp_anim()), frames=3),
    ]
    for o in range(1, 9):
        data = _bytes(lambda o=o: corpus.oriented_jpeg(o))  # type: ignore[misc]
        cases.append(Case(f"jpeg-orientation-{o}", data, "JPEG", quality_in=90,
                          method="standard_tables_exact",
                          reference=lambda: corpus.quadrants().convert("RGBA"), out_mode="RGB"))
    truncated_jpeg = _bytes(lambda: _jpeg(90)[: len(_jpeg(90)) * 6 // 10])
    truncated_png = _bytes(lambda: corpus.encode(corpus.photo(), "PNG")[:20_000])
    float_tiff = _bytes(lambda: corpus.encode(Image.new("F", (16, 16), 0.5), "TIFF"))
    limit = PolicyViolation
    cases += [
        Case("truncated-jpeg", truncated_jpeg, error="truncated_image"),
        Case("truncated-png", truncated_png, error="truncated_image"),
        Case("bomb-huge-header", lambda: corpus.png_header_only(60_000, 60_000),
             error="too_many_pixels", error_type=limit),
        Case("bomb-over-default-limit", lambda: corpus.png_header_only(8_000, 7_000),
             error="too_many_pixels", error_type=limit),
        Case("bomb-pillow-warning-as-error", lambda: corpus.png_header_only(10_000, 10_000),
             error="too_many_pixels", error_type=limit,
             options=EngineOptions(max_pixels=200_000_000)),
        Case("animation-frames-summed", gif_anim, error="too_many_pixels", error_type=limit,
             options=EngineOptions(max_pixels=5_000)),
        Case("zero-bytes", lambda: b"", error="empty_body"),
        Case("html-served-as-jpg",
             lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
             error="not_an_image"),
        Case("svg", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
             error="unsupported_format"),
        Case("ico", lambda: corpus.encode(corpus.photo((32, 32)), "ICO"),
             error="unsupported_format"),
        Case("jpeg-corrupt-header", lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
             error="decode_failed"),
        Case("tiff-float-mode", float_tiff, error="unsupported_mode"),
    ]
    return cases


CASES = _cases()


def _flatten(img: Image.Image) -> Image.Image:
    """RGBA composited over grey, then shrunk: what a viewer shows, coarse-grained."""
    rgba = img.convert("RGBA")
    grey = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
    grey.alpha_composite(rgba)
    return grey.convert("RGB").resize((24, 24), Image.Resampling.BOX)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    pa, pb = _flatten(a).tobytes(), _flatten(b).tobytes()
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)


@pytest.mark.parametrize("case", [c for c in CASES if c.error], ids=lambda c: c.id)
def test_rejected_with_code(case: Case) -> None:
    with pytest.raises(ImgpipeError) as caught:
        compress(case.make(), case.options)
    assert caught.value.code == case.error
    assert isinstance(caught.value, case.error_type)


@pytest.mark.parametrize("case", [c for c in CASES if not c.error], ids=lambda c: c.id)
def test_reencoded_as_expected(case: Case) -> None:
    data = case.make()
    forced = compress(data, replace(case.options, keep_smaller_original=False))
    assert not forced.kept_original
    assert forced.source_format == case.id.split("-")[0].upper()  # ids start with the format
    assert forced.format == case.out_format
    assert (forced.quality_in, forced.quality_method) == (case.quality_in, case.method)
    assert case.quality_in is not None
    expected_q = max(int(case.quality_in / 2 + 0.5), case.options.min_quality)
    assert forced.quality_out == expected_q
    assert forced.bytes_out == len(forced.data)
    with Image.open(io.BytesIO(forced.data)) as out:
        assert out.format == case.out_format
        assert getattr(out, "n_frames", 1) == case.frames == forced.frames
        if case.out_mode is not None:
            assert out.mode == case.out_mode
        if out.format == "JPEG":
            assert estimate_quality(out).quality == forced.quality_out
            assert estimate_quality(out).method == "standard_tables_exact"
        shown = ImageOps.exif_transpose(out)
        assert (forced.width, forced.height) == shown.size
        assert case.reference is not None
        reference = case.reference()
        assert shown.size == reference.size
        assert mean_abs_diff(shown, reference) < 12.0

    kept = compress(data, case.options)
    assert kept.bytes_out <= kept.bytes_in == len(data)
    if kept.kept_original:
        assert forced.bytes_out >= len(data)
        assert kept.bytes_out <= forced.bytes_out
        assert kept.format == kept.source_format
        assert kept.quality_out == kept.quality_in
    else:
        assert forced.bytes_out < len(data)
        assert kept.data == forced.data


def test_the_ycck_sample_really_is_decoded_as_ycck() -> None:
    """Guards the YCCK case above: the transform flag must change the decode."""
    ycck = Image.open(io.BytesIO(corpus.ycck_jpeg()))
    plain = Image.open(io.BytesIO(corpus.encode(corpus.photo().convert("CMYK"), "JPEG",
                                                quality=90)))
    assert ycck.mode == plain.mode == "CMYK"
    assert ycck.tobytes() != plain.tobytes()
