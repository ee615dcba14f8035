"""The compression engine: re-encode an image at half its estimated quality.

Usable without Kafka: ``compress(data)`` is synchronous and pure CPU;
``EnginePool`` runs it in killable worker processes with a per-image CPU limit.
See docs/compression.md for the rules.
"""

from .codec import compress, default_output_format
from .options import CompressResult, EngineOptions
from .pool import EnginePool, PoolStats
from .quality import QualityEstimate, estimate_jpeg_tables, estimate_quality, target_quality

__all__ = [
    "CompressResult",
    "EngineOptions",
    "EnginePool",
    "PoolStats",
    "QualityEstimate",
    "compress",
    "default_output_format",
    "estimate_jpeg_tables",
    "estimate_quality",
    "target_quality",
]
