from __future__ import annotations

import os

from shared.settings import CommonSettings


class Settings(CommonSettings):
    """Processor knobs (env ``IMGPIPE_PROCESSOR_*`` style names below)."""

    # Consumer group; defaults to "<topic_prefix>-processor".
    processor_group: str = ""
    processor_health_port: int = 8002
    processor_host: str = "127.0.0.1"
    # Messages handled at once (downloads/uploads overlap with encoding).
    processor_max_in_flight: int = 32
    # Engine worker processes; 0 = one per core.
    processor_workers: int = 0
    processor_drain_seconds: float = 30.0

    # Compression engine
    min_quality: int = 10
    force_format: str | None = None
    keep_smaller_original: bool = True
    keep_metadata: bool = False
    max_pixels: int = 50_000_000
    cpu_seconds_per_image: float = 20.0

    # Fetching
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 15.0
    fetch_total_timeout: float = 60.0
    fetch_max_bytes: int = 25 * 1024 * 1024
    fetch_max_attempts: int = 4
    fetch_backoff_base: float = 0.5
    fetch_per_host_limit: int = 4

    def engine_workers(self) -> int:
        return self.processor_workers or (os.cpu_count() or 1)
