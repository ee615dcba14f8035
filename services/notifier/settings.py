from __future__ import annotations

from shared.settings import CommonSettings


class Settings(CommonSettings):
    # Consumer group; defaults to "<topic_prefix>-notifier".
    notifier_group: str = ""
    notifier_host: str = "127.0.0.1"
    notifier_health_port: int = 8003
    notifier_max_in_flight: int = 16
    notifier_drain_seconds: float = 30.0
    # Webhook delivery
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff_base: float = 1.0
    webhook_backoff_max: float = 60.0
    # If set, every webhook carries X-Imgpipe-Signature: t=<unix>,v1=<hex HMAC-SHA256>.
    webhook_secret: str = ""
