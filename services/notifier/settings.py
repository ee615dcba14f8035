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
    # Standard Webhooks signing secrets (whsec_...), the current one first;
    # during a rotation the new and the old one, space-separated: every
    # webhook is then signed with both. Required unless webhook_unsigned.
    webhook_secret: str = ""
    # The explicit opt-out: send webhooks unsigned (receivers cannot tell
    # ours from a forgery). Only for receivers that cannot verify at all.
    webhook_unsigned: bool = False

    @model_validator(mode="after")
    def _signed_unless_opted_out(self) -> Settings:
        try:  # a mistyped secret stops the notifier at start, not at delivery
            keys = webhook_signing.parse_secrets(self.webhook_secret)
        except webhook_signing.SecretInvalid as exc:
            raise ValueError(f"IMGPIPE_WEBHOOK_SECRET: {exc.message}") from None
        if not keys and not self.webhook_unsigned:
            raise ValueError(
                "IMGPIPE_WEBHOOK_SECRET is not set: webhooks are signed (Standard "
                "Webhooks). Set it to a secret from `python -m shared.webhook_signing` "
                "and give that secret to your webhook receivers, or set "
                "IMGPIPE_WEBHOOK_UNSIGNED=true to send them unsigned.")
        return self

    def webhook_secrets(self) -> list[str]:
        return webhook_signing.parse_secrets(self.webhook_secret)
