"""The error tree every service shares, grouped by what the caller does next.

    ImgpipeError                 base; ``code`` is stable and machine-readable
    ├── TransientError           retry with backoff (network blip, 5xx, broker away)
    └── PermanentError           do not retry: record the failure and move on
        ├── InvalidInputError    the input itself is bad (CSV cell, URL, image bytes)
        │   ├── FetchRejected    a URL could not be fetched for a permanent reason
        │   └── ImageRejected    bytes that are not an acceptable image
        └── PolicyViolation      refused by policy (forbidden address, size limit)

A consumer that catches ``TransientError`` retries; one that catches
``PermanentError`` records ``code`` and ``message`` on the image/request (or
dead-letters the event) and commits, so a bad item never stalls a partition.
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
