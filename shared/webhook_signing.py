"""Webhook signatures by the Standard Webhooks specification
(https://www.standardwebhooks.com, ``spec/standard-webhooks.md``).

Every webhook carries three headers:

- ``webhook-id``: the message's id, the same on every retry of one delivery
  (receivers drop duplicates by it);
- ``webhook-timestamp``: when this attempt was signed, in Unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over
  ``"<id>.<timestamp>.<raw body>"``, one per secret, space-separated.

A secret is ``whsec_`` + base64 of at least 24 random bytes; the HMAC key is
the decoded bytes. Rotation: configure the new secret and the old one
together; every webhook is then signed with both, and a receiver that knows
either accepts it, until the old one is dropped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

from shared.errors import InvalidInputError
from shared.signing import SignatureInvalid

PREFIX = "whsec_"
MIN_KEY_BYTES = 24
ID, TIMESTAMP, SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"


class SecretInvalid(InvalidInputError):
    code = "webhook_secret_invalid"


def new_secret() -> str:
    """A fresh secret, ``whsec_`` + base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (the prefix is optional)."""
    raw = secret.strip().removeprefix(PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretInvalid("a webhook secret is whsec_ followed by base64 "
                            "(make one with: python -m shared.webhook_signing)") from exc
    if len(key) < MIN_KEY_BYTES:
        raise SecretInvalid(f"a webhook secret needs at least {MIN_KEY_BYTES} bytes of key "
                            f"(this one has {len(key)})")
    return key


def parse_secrets(value: str) -> list[str]:
    """Secrets from a setting: space- or comma-separated, the current one first.
    Each is checked, so a typo stops the service at start, not at delivery."""
    found = [s for s in value.replace(",", " ").split() if s]
    for s in found:
        secret_key(s)
    return found


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body,
                   hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sign_headers(keys: Sequence[str], msg_id: str, body: bytes,
                 timestamp: int | None = None) -> dict[str, str]:
    """The three headers of one attempt, signed with every secret in ``keys``."""
    t = int(time.time()) if timestamp is None else timestamp
    return {ID: msg_id, TIMESTAMP: str(t),
            SIGNATURE: " ".join(signature(k, msg_id, t, body) for k in keys)}


def verify(keys: Sequence[str], headers: Mapping[str, str], body: bytes, *,
           tolerance: float = 300.0, now: float | None = None) -> None:
    """What a receiver does: raise SignatureInvalid unless one signature made
    with one of ``keys`` covers this id, timestamp and raw body, and the
    timestamp is within ``tolerance`` seconds of now (a replay is refused)."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, given = lower.get(ID), lower.get(TIMESTAMP), lower.get(SIGNATURE)
    if not (msg_id and stamp and given):
        raise SignatureInvalid(f"missing {ID}, {TIMESTAMP} or {SIGNATURE} header")
    try:
        t = int(stamp)
    except ValueError as exc:
        raise SignatureInvalid(f"{TIMESTAMP} is not Unix seconds: {stamp!r}") from exc
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise SignatureInvalid(f"{TIMESTAMP} is outside the allowed window of "
                               f"{tolerance:.0f}s (a replay, or a wrong clock)")
    offered = [s for s in given.split() if s.startswith("v1,")]
    for key in keys:
        expected = signature(key, msg_id, t, body)
        if any(hmac.compare_digest(expected, s) for s in offered):
            return
    raise SignatureInvalid("no signature matches the body with a known secret")


if __name__ == "__main__":  # python -m shared.webhook_signing: a new secret
    import sys

    sys.stdout.write(new_secret() + "\n")
