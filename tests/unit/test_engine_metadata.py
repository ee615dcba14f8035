"""Metadata policy, encoder settings carried over, options and the keep-original rule."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image, JpegImagePlugin

from services.processor.engine import EngineOptions, compress
from services.processor.engine.metadata import strip_jpeg_metadata
from tests import imagecorpus as corpus

NO_KEEP = EngineOptions(keep_smaller_original=False)


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _gps_jpeg(**params: object) -> bytes:
    return corpus.encode(corpus.photo(), "JPEG", quality=90, exif=corpus.exif_with_gps(),
                         **params)


def test_gps_and_camera_exif_stripped_by_default() -> None:
    data = _gps_jpeg()
    with _open(data) as src:
        assert src.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input really has GPS
    result = compress(data, NO_KEEP)
    with _open(result.data) as out:
        exif = out.getexif()
        assert ExifTags.Base.Make not in exif
        assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert "exif" not in out.info


def test_keep_metadata_keeps_exif() -> None:
    result = compress(_gps_jpeg(), EngineOptions(keep_smaller_original=False, keep_metadata=True))
    with _open(result.data) as out:
        exif = out.getexif()
        assert exif[ExifTags.Base.Make] == "ExampleCam"
        assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"


def test_icc_profile_kept() -> None:
    icc = corpus.srgb_icc()
    for data in (corpus.encode(corpus.photo(), "JPEG", quality=90, icc_profile=icc),
                 corpus.encode(corpus.rgba_photo(), "PNG", icc_profile=icc)):
        result = compress(data, NO_KEEP)
        with _open(result.data) as out:
            assert out.info.get("icc_profile") == icc


def test_cmyk_profile_converted_when_forced_to_webp() -> None:
    cmyk = corpus.encode(corpus.photo().convert("CMYK"), "JPEG", quality=90)
    result = compress(cmyk, EngineOptions(force_format="WEBP", keep_smaller_original=False))
    with _open(result.data) as out:
        assert out.mode == "RGB"


def test_progressive_and_subsampling_carried_over() -> None:
    data = corpus.encode(corpus.photo(), "JPEG", quality=90, progressive=True, subsampling=0)
    result = compress(data, NO_KEEP)
    with _open(result.data) as out:
        assert out.info.get("progressive")
        assert JpegImagePlugin.get_sampling(out) == 0
    baseline = compress(corpus.encode(corpus.photo(), "JPEG", quality=90), NO_KEEP)
    with _open(baseline.data) as out:
        assert not out.info.get("progressive")
        assert JpegImagePlugin.get_sampling(out) == 2


@pytest.mark.parametrize(
    ("force", "fmt", "content_type", "ext", "quality_out"),
    [("JPEG", "JPEG", "image/jpeg", "jpg", 50), ("jpg", "JPEG", "image/jpeg", "jpg", 50),
     ("WEBP", "WEBP", "image/webp", "webp", 50), ("PNG", "PNG", "image/png", "png", 100)],
)
def test_force_format(force: str, fmt: str, content_type: str, ext: str, quality_out: int) -> None:
    result = compress(corpus.encode(corpus.rgba_photo(), "PNG"),
                      EngineOptions(force_format=force, keep_smaller_original=False))
    assert (result.format, result.content_type, result.extension) == (fmt, content_type, ext)
    assert result.quality_out == quality_out
    with _open(result.data) as out:
        assert out.format == fmt
        assert out.mode == ("RGB" if fmt == "JPEG" else "RGBA")


def test_forced_jpeg_of_animation_is_first_frame() -> None:
    result = compress(corpus.animated("GIF"), EngineOptions(force_format="JPEG",
                                                             keep_smaller_original=False))
    with _open(result.data) as out:
        assert out.format == "JPEG" and result.frames == 1
        red, green, _blue = out.convert("RGB").getpixel((40, 40))  # type: ignore[misc]
        assert red > 180 and green < 80  # the first frame is red


def test_animation_keeps_durations() -> None:
    result = compress(corpus.animated("GIF"), NO_KEEP)
    with _open(result.data) as out:
        durations = []
        for i in range(getattr(out, "n_frames", 1)):
            out.seek(i)
            out.load()
            durations.append(out.info["duration"])
    assert durations == corpus.ANIMATION_DURATIONS


@pytest.mark.parametrize(
    "kwargs",
    [{"min_quality": 0}, {"min_quality": 96}, {"force_format": "GIF"}, {"max_pixels": 0},
     {"cpu_seconds": 0}],
)
def test_invalid_options_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EngineOptions(**kwargs)  # type: ignore[arg-type]


def test_min_quality_floor() -> None:
    data = corpus.encode(corpus.photo(), "JPEG", quality=90)
    result = compress(data, EngineOptions(min_quality=70, keep_smaller_original=False))
    assert result.quality_out == 70


def test_kept_original_is_stripped_of_gps_but_keeps_orientation() -> None:
    # A floor above the source quality: the re-encode is bigger, so the input is kept.
    exif = corpus.exif_with_gps()
    exif[ExifTags.Base.Orientation] = 6
    data = corpus.encode(corpus.photo(), "JPEG", quality=60, exif=exif.tobytes())
    result = compress(data, EngineOptions(min_quality=95))
    assert result.kept_original
    assert result.bytes_out < len(data)
    with _open(result.data) as out:
        kept_exif = out.getexif()
        assert dict(kept_exif) == {ExifTags.Base.Orientation: 6}
        assert out.tobytes() == _open(data).tobytes()  # the pixels are untouched
    assert (result.width, result.height) == (240, 320)
    assert compress(data, EngineOptions(min_quality=95, keep_metadata=True)).data == data


def test_keep_smaller_original_off_returns_reencode() -> None:
    data = corpus.encode(corpus.quadrants(), "JPEG", quality=10)
    result = compress(data, NO_KEEP)
    assert not result.kept_original and result.format == "JPEG"


def test_strip_jpeg_metadata_rejects_garbage() -> None:
    assert strip_jpeg_metadata(b"not a jpeg") is None
    assert strip_jpeg_metadata(b"\xff\xd8\xff\xe1\xff\xff") is None
