from __future__ import annotations

from urllib.parse import urlsplit

from shared.settings import CommonSettings


class Settings(CommonSettings):
    aggregator_host: str = "127.0.0.1"
    # Faust worker web server: serves GET /health.
    aggregator_health_port: int = 8004
    # Consumer group of the inbound events; defaults to "<topic_prefix>-aggregator"
    # (the Faust worker that hosts it uses "<group>-worker").
    aggregator_app_id: str = ""
    # Events handled at once (a request's own events one at a time).
    aggregator_max_in_flight: int = 32
    aggregator_drain_seconds: float = 20.0
    # A member that stops heartbeating leaves the group after this long.
    aggregator_session_timeout: float = 30.0
    # Faust's local directory (it keeps no state we rely on).
    aggregator_datadir: str = ".data/faust/{app_id}"
    # Status API (FastAPI).
    status_host: str = "127.0.0.1"
    status_port: int = 8001
    failures_listed: int = 100
    # Status reads per API key (429 with Retry-After beyond): a bucket of
    # rate_status_burst refilled at rate_status_per_second, per replica. 0 = none.
    rate_status_per_second: float = 20.0
    rate_status_burst: int = 40
    # Origins allowed to read the status API from a browser (comma-separated).
    # Empty: only the upload page's own (ingest_base_url's origin, and on
    # loopback both its localhost and 127.0.0.1 spellings).
    cors_origins: str = ""

    def allowed_origins(self) -> list[str]:
        if self.cors_origins.strip():
            return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
        url = urlsplit(self.ingest_base_url)
        origin = f"{url.scheme}://{url.netloc}"
        host, port = url.hostname or "", f":{url.port}" if url.port else ""
        if host in ("127.0.0.1", "localhost", "::1"):
            return [origin, *(f"{url.scheme}://{alias}{port}"
                              for alias in ("127.0.0.1", "localhost") if alias != host)]
        return [origin]

    def app_id(self) -> str:
        return self.aggregator_app_id or f"{self.topic_prefix}-aggregator"
