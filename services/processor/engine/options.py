"""Options and result types of the compression engine."""

from __future__ import annotations

from dataclasses import dataclass

QUALITY_CAP = 95

#: Output formats the engine can write: (content type, file extension).
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
    "PNG": ("image/png", "png"),
    "AVIF": ("image/avif", "avif"),
}

#: Source formats: (content type, extension) used when the original is kept.
SOURCE_FORMATS: dict[str, tuple[str, str]] = {
    **OUTPUT_FORMATS,
    "GIF": ("image/gif", "gif"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tiff"),
}


@dataclass(frozen=True)
class EngineOptions:
    """How to compress.  Validated on construction (``ValueError`` when invalid)."""

    min_quality: int = 10  # floor for the output quality; the cap is QUALITY_CAP
    force_format: str | None = None  # "JPEG" / "WEBP" / "PNG" / "AVIF"; None = per-source rule
    keep_smaller_original: bool = True  # keep the input when re-encoding is not smaller
    keep_metadata: bool = False  # EXIF/XMP stripped by default; ICC profile always kept
    max_pixels: int = 50_000_000  # width * height, summed over animation frames
    cpu_seconds: float = 20.0  # per-image CPU limit, enforced by EnginePool

    def __post_init__(self) -> None:
        if not 1 <= self.min_quality <= QUALITY_CAP:
            raise ValueError(f"min_quality must be within 1..{QUALITY_CAP}")
        if self.force_format is not None:
            upper = self.force_format.upper()
            if upper == "JPG":
                upper = "JPEG"
            if upper not in OUTPUT_FORMATS:
                raise ValueError(f"force_format must be one of {sorted(OUTPUT_FORMATS)}")
            object.__setattr__(self, "force_format", upper)
        if self.max_pixels <= 0:
            raise ValueError("max_pixels must be positive")
        if self.cpu_seconds <= 0:
            raise ValueError("cpu_seconds must be positive")


@dataclass(frozen=True)
class CompressResult:
    """The outcome for one image.  ``data`` is what to store."""

    data: bytes
    format: str  # "JPEG", "WEBP", "PNG", "AVIF" (or the source format when kept)
    content_type: str  # e.g. "image/jpeg"
    extension: str  # e.g. "jpg"
    quality_in: int  # estimated quality of the source
    quality_out: int  # quality the output was encoded at (100 = lossless PNG output)
    quality_method: str  # how quality_in was obtained, see quality.py
    bytes_in: int
    bytes_out: int
    width: int  # of the output, as displayed (after EXIF orientation)
    height: int
    kept_original: bool  # True when the input bytes were kept (re-encode not smaller)
    source_format: str  # detected from the bytes: "JPEG", "PNG", "GIF", ...
    frames: int = 1  # frames in the output (animations are kept whole as WebP)
