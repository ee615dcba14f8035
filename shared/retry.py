"""What to retry, how long to wait and when to give up: one policy for every caller.

An exception is *transient* when the same call may well succeed later: our
own ``TransientError``, and the infrastructure failures of the clients we use
(network, MongoDB, Kafka, S3). A ``PermanentError`` will fail the same way
again: record it (or dead-letter the message) at once. Anything else is a bug
or unexpected data: retrying it forever would stall a partition, so it is
retried a few times and then given up on.

Every retry loop (the consumer loop, the fetcher, the notifier's webhook
deliveries, the relay) asks a ``RetryPolicy`` after each failure:

    error                          decide(exc, attempt)
    PermanentError                 GiveUp("permanent") at once
    transient                      Retry(backoff) while attempt < max_attempts (None: always)
    anything else                  Retry(backoff) while attempt < max_unexpected_attempts,
                                   then GiveUp("unexpected")

``backoff`` is exponential, capped, with full jitter; a ``Retry-After`` the
error carries (``TransientError.retry_after``) wins, capped too. The table of
what each caller does with a ``GiveUp`` is in docs/workers.md ("Retries").
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeVar

from aiokafka.errors import KafkaError
from minio.error import MinioException
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from shared.errors import PermanentError, TransientError

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError, OSError, TimeoutError, ConnectionFailure, KafkaError, MinioException,
    Urllib3Error,
)
# Attempts for an exception that is neither transient nor a PermanentError.
MAX_UNEXPECTED_ATTEMPTS = 5
_MAX_EXPONENT = 62  # 2**62 s is already past any cap: no float overflow on huge attempts


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    # Server-side MongoDB errors flagged retryable (e.g. not primary, shutdown).
    if isinstance(exc, OperationFailure | PyMongoError):
        return exc.has_error_label("RetryableWriteError") or exc.timeout
    return False


class Kind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNEXPECTED = "unexpected"


def classify(exc: BaseException) -> Kind:
    """What kind of failure ``exc`` is (a ``PermanentError`` is never transient)."""
    if isinstance(exc, PermanentError):
        return Kind.PERMANENT
    return Kind.TRANSIENT if is_transient(exc) else Kind.UNEXPECTED


def retry_after_of(exc: BaseException) -> float | None:
    """The wait an error asks for (a server's ``Retry-After``, a lease's expiry)."""
    return exc.retry_after if isinstance(exc, TransientError) else None


def backoff(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1 = the first).

    Exponential, capped, full jitter: ``uniform(0, min(cap, base * 2**(attempt-1)))``.
    An honoured ``retry_after`` wins, capped at ``cap`` (negative counts as 0)."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    return random.uniform(0.0, min(cap, base * 2.0 ** exponent))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds."""

    delay: float


GiveUpReason = Literal["permanent", "transient_exhausted", "unexpected_exhausted"]


@dataclass(frozen=True)
class GiveUp:
    """Stop retrying: dead-letter the message, or record the failure.

    ``reason``: a ``PermanentError`` (``permanent``), a transient error that
    used up ``max_attempts`` (``transient_exhausted``), or an unexpected error
    that used up ``max_unexpected_attempts`` (``unexpected_exhausted``)."""

    reason: GiveUpReason

    @property
    def permanent(self) -> bool:
        return self.reason == "permanent"


Decision = Retry | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    """How one caller retries. ``max_attempts`` bounds transient failures
    (None: retry until success or shutdown); it bounds unexpected ones too when
    it is the smaller bound. Attempts count from 1, the first try included."""

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int | None = None
    max_unexpected_attempts: int = MAX_UNEXPECTED_ATTEMPTS

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        return backoff(attempt, base=self.base, cap=self.cap, retry_after=retry_after)

    def decide(self, exc: BaseException, attempt: int) -> Decision:
        """After failed attempt ``attempt`` with ``exc``: retry (and when), or give up."""
        kind = classify(exc)
        if kind is Kind.PERMANENT:
            return GiveUp("permanent")
        limit = self.max_attempts if self.max_attempts is not None else math.inf
        if kind is Kind.UNEXPECTED:
            if attempt >= min(limit, self.max_unexpected_attempts):
                return GiveUp("unexpected_exhausted")
        elif attempt >= limit:
            return GiveUp("transient_exhausted")
        return Retry(self.delay(attempt, retry_after_of(exc)))


# The consumer loop's and the relay's default: 0.5 s doubling up to 30 s.
DEFAULT_POLICY = RetryPolicy()


T = TypeVar("T")
STALE_CONNECTION_ATTEMPTS = 3


async def retry_stale_connection(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``; if a pooled MongoDB connection turns out to be dead (the
    server restarted, a firewall dropped it), run it again on a fresh one, up
    to ``STALE_CONNECTION_ATTEMPTS`` in all. A server that cannot be reached at
    all (server selection timed out: it already waited) is not retried here.
    Only for idempotent calls, or ones whose repeat the caller recognises."""
    for attempt in range(1, STALE_CONNECTION_ATTEMPTS + 1):
        try:
            return await call()
        except AutoReconnect as exc:
            if isinstance(exc, ServerSelectionTimeoutError) or (
                    attempt == STALE_CONNECTION_ATTEMPTS):
                raise
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")
