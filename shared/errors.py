"""The error tree every service shares, grouped by what the caller does next.

    ImgpipeError                 base; ``code`` is stable and machine-readable
    ├── TransientError           retry with backoff (network blip, 5xx, broker away);
    │   │                        ``retry_after``: how long to wait, when known
    │   └── RateLimited          over a per-key limit (HTTP 429): retry after ``retry_after``
    └── PermanentError           do not retry: record the failure and move on
        ├── InvalidInputError    the input itself is bad (CSV cell, URL, image bytes);
        │   │                    its message never tells anyone to retry
        │   ├── FetchRejected    a URL could not be fetched for a permanent reason
        │   └── ImageRejected    bytes that are not an acceptable image
        ├── PolicyViolation      refused by policy (forbidden address, size limit)
        └── Unauthorized         no valid API key (HTTP 401): fix the credentials

``shared.retry`` turns the classes into one policy (``RetryPolicy.decide``):
a transient error (this ``TransientError``, or a network, MongoDB, Kafka or S3
client error) is retried with backoff; a ``PermanentError`` is recorded on the
image/request, or its event dead-lettered, at once, so a bad item never stalls
a partition; anything else (a bug) is retried a few times, then treated the
same. docs/workers.md ("Retries") has what each caller does.
"""

from __future__ import annotations


class ImgpipeError(Exception):
    """Base class. ``code`` is a stable snake_case identifier shown to users."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransientError(ImgpipeError):
    """Worth retrying: the same call may succeed later."""

    code = "transient_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(ImgpipeError):
    """Not worth retrying: record it and move on."""

    code = "permanent_error"


class InvalidInputError(PermanentError):
    code = "invalid_input"


class FetchRejected(InvalidInputError):
    code = "fetch_failed"


class ImageRejected(InvalidInputError):
    code = "not_an_image"


class PolicyViolation(PermanentError):
    code = "policy_violation"


class Unauthorized(PermanentError):
    code = "unauthorized"


class RateLimited(TransientError):
    """Over a per-key rate limit: answered 429 with ``Retry-After``."""

    code = "rate_limited"
