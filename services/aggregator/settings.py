from __future__ import annotations

from shared.settings import CommonSettings


class Settings(CommonSettings):
    aggregator_host: str = "127.0.0.1"
    # Faust worker web server: serves GET /health.
    aggregator_health_port: int = 8004
    # Faust app id = consumer group; defaults to "<topic_prefix>-aggregator".
    aggregator_app_id: str = ""
    # Faust's local directory (it keeps no state we rely on).
    aggregator_datadir: str = ".data/faust/{app_id}"
    # Status API (FastAPI).
    status_host: str = "127.0.0.1"
    status_port: int = 8001
    failures_listed: int = 100
    # Origins allowed to read the status API from a browser (comma-separated).
    cors_origins: str = "*"

    def app_id(self) -> str:
        return self.aggregator_app_id or f"{self.topic_prefix}-aggregator"
