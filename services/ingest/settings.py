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
    # Rows per batch of product pages stored (the first batch is smaller).
    publish_batch: int = 2000
    # An upload of at most this many bytes and rows is parsed once: its rows
    # stay in memory (~0.3 KB a row plus its text) until accepted. A larger one
    # is validated, then read again, streaming.
    parse_once_max_bytes: int = 4 * 1024 * 1024
    parse_once_max_rows: int = 20_000
    # Signed callbacks from an external image-processing service; empty = disabled.
    callback_secret: str = ""
    callback_tolerance_seconds: float = 300.0

    # Backpressure: uploads parsed and stored at once; one more waits up to
    # upload_wait_seconds for a slot, then gets 503 with Retry-After.
    max_concurrent_uploads: int = 4
    upload_wait_seconds: float = 2.0
    retry_after_seconds: int = 5

    # Limits per API key (429 with Retry-After): uploads a minute (a bucket
    # of rate_uploads_burst, kept per ingest replica) and requests in
    # progress at once (counted in MongoDB). 0 = no limit.
    rate_uploads_per_minute: float = 60.0
    rate_uploads_burst: int = 20
    max_active_requests: int = 50
    active_retry_after_seconds: int = 30
    # Filled into the upload page for a browser on this machine (make run's demo key).
    demo_api_key: str = ""

    # The relay (services/ingest/relay.py): fair publication of stored requests.
    relay_window: int = 128  # images published but unfinished, per request
    relay_tenant_window: int = 1000  # the same, per tenant (all its requests)
    relay_batch: int = 256  # events per request per round
    relay_max_in_flight: int = 4000  # images published but unfinished, in all
    relay_max_active: int = 1000  # requests looked at per round
    relay_poll_seconds: float = 0.2
    relay_lease_seconds: float = 10.0
    # An upload that stopped storing its pages this long ago is dropped.
    receiving_stale_seconds: float = 120.0

    # The reconciler (services/ingest/reconciler.py): re-drives positions of
    # requests with no progress for reconcile_after_seconds.
    reconcile_interval_seconds: float = 15.0
    reconcile_after_seconds: float = 300.0
    reconcile_max_attempts: int = 3

    def csv_limits(self) -> CsvLimits:
        return CsvLimits(max_rows=self.max_rows, max_urls_per_row=self.max_urls_per_row,
                         max_images_per_request=self.max_images_per_request,
                         max_errors=self.max_errors_reported)
