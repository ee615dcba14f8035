from __future__ import annotations

from services.ingest.csvparse import CsvLimits
from shared.settings import CommonSettings


class Settings(CommonSettings):
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8000
    max_upload_bytes: int = 100 * 1024 * 1024
    max_rows: int = 200_000
    max_urls_per_row: int = 50
    max_images_per_request: int = 500_000
    max_errors_reported: int = 1000
    # Check webhook URLs (scheme, port, resolved addresses) at upload time.
    check_webhook_dns: bool = True
    publish_batch: int = 2000
    # An upload of at most this many bytes and rows is parsed once: its rows
    # stay in memory (~0.3 KB a row plus its text) until accepted. A larger one
    # is validated, then read again, streaming.
    parse_once_max_bytes: int = 4 * 1024 * 1024
    parse_once_max_rows: int = 20_000
    # Signed callbacks from an external image-processing service; empty = disabled.
    callback_secret: str = ""
    callback_tolerance_seconds: float = 300.0

    def csv_limits(self) -> CsvLimits:
        return CsvLimits(max_rows=self.max_rows, max_urls_per_row=self.max_urls_per_row,
                         max_images_per_request=self.max_images_per_request,
                         max_errors=self.max_errors_reported)
