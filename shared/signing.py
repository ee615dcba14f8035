"""HMAC-SHA256 signatures of the callbacks we accept from an external
image-processing service (the webhooks we send are signed by Standard Webhooks:
``shared/webhook_signing.py``).

Header format: ``X-Imgpipe-Signature: t=<unix seconds>,v1=<hex>`` where the
MAC covers ``b"<t>." + body``. Including the timestamp lets a receiver refuse
replays older than a tolerance window.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from shared.errors import PermanentError

HEADER = "X-Imgpipe-Signature"


class SignatureInvalid(PermanentError):
    code = "signature_invalid"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance: float = 300.0,
           now: float | None = None) -> None:
    """Raise SignatureInvalid unless ``header`` signs ``body`` within the window."""
    if not header:
        raise SignatureInvalid(f"missing {HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError) as exc:
        raise SignatureInvalid(f"malformed {HEADER} header: expected t=<unix>,v1=<hex>") \
            from exc
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise SignatureInvalid("signature timestamp outside the allowed window "
                               f"of {tolerance:.0f}s (check the sender's clock)")
    expected = sign(secret, body, t).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise SignatureInvalid("signature does not match the body")
