from __future__ import annotations

from pydantic import model_validator

from shared import webhook_signing
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
    # Webhooks are signed (Standard Webhooks) with their tenant's secrets
    # (shared/tenants.py). This one, the current first, space-separated during
    # a rotation, signs webhooks of requests whose tenant has none (requests
    # from before tenants); empty: such a webhook is not sent.
    webhook_secret: str = ""
    # The explicit opt-out: send every webhook unsigned (receivers cannot tell
    # ours from a forgery). Only for receivers that cannot verify at all.
    webhook_unsigned: bool = False

    @model_validator(mode="after")
    def _secret_well_formed(self) -> Settings:
        try:  # a mistyped secret stops the notifier at start, not at delivery
            webhook_signing.parse_secrets(self.webhook_secret)
        except webhook_signing.SecretInvalid as exc:
            raise ValueError(f"IMGPIPE_WEBHOOK_SECRET: {exc.message}") from None
        return self

    def webhook_secrets(self) -> list[str]:
        return webhook_signing.parse_secrets(self.webhook_secret)
