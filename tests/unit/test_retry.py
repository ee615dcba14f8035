"""shared.retry: the one backoff function and the one retry policy."""

from __future__ import annotations

import random

import pytest
from aiokafka.errors import KafkaConnectionError
from pymongo.errors import AutoReconnect, DuplicateKeyError

from services.ingest.handlers import IdempotencyConflict, IdempotencyInProgress
from services.ingest.pages import UploadDropped
from shared.errors import (
    FetchRejected,
    ImageRejected,
    ImgpipeError,
    InvalidInputError,
    PermanentError,
    PolicyViolation,
    TransientError,
)
from shared.problems import for_error
from shared.retry import (
    GiveUp,
    Kind,
    Retry,
    RetryPolicy,
    backoff,
    classify,
    parse_retry_after,
)

SAMPLES = 4000


@pytest.fixture(autouse=True)
def seeded() -> None:
    random.seed(12)  # the bounds hold for any seed; this keeps a failure reproducible


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 40, 10_000])
def test_backoff_never_leaves_zero_to_the_capped_exponential(attempt: int) -> None:
    base, cap = 0.5, 30.0
    ceiling = min(cap, base * 2 ** min(attempt - 1, 100))
    delays = [backoff(attempt, base=base, cap=cap) for _ in range(SAMPLES)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter: the whole range is used, not only its upper half.
    assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
    assert sum(d < ceiling / 2 for d in delays) > SAMPLES / 3


def test_backoff_doubles_until_the_cap() -> None:
    tops = [max(backoff(n, base=1.0, cap=10.0) for _ in range(SAMPLES)) for n in (1, 2, 3, 4, 5)]
    assert [round(t) for t in tops] == [1, 2, 4, 8, 10]


def test_an_attempt_below_one_counts_as_the_first() -> None:
    assert all(backoff(0, base=1.0, cap=10.0) <= 1.0 for _ in range(200))


@pytest.mark.parametrize(("retry_after", "expected"), [
    (7.0, 7.0),  # honoured exactly: no jitter on a server's explicit wish
    (0.0, 0.0),
    (-3.0, 0.0),  # a date in the past
    (3600.0, 30.0),  # capped
])
def test_a_retry_after_wins_and_is_capped(retry_after: float, expected: float) -> None:
    for attempt in (1, 6, 50):
        assert backoff(attempt, base=0.5, cap=30.0, retry_after=retry_after) == expected


def test_retry_after_headers() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    for junk in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(junk) is None


TRANSIENT = [TransientError("x"), IdempotencyInProgress("x"), UploadDropped(),
             ConnectionResetError(), TimeoutError(), KafkaConnectionError(), AutoReconnect("x")]
PERMANENT = [PermanentError("x"), InvalidInputError("x"), FetchRejected("x"),
             ImageRejected("x"), PolicyViolation("x"), IdempotencyConflict("x")]
UNEXPECTED = [KeyError("k"), ZeroDivisionError(), ImgpipeError("x"), DuplicateKeyError("x")]


@pytest.mark.parametrize("exc", TRANSIENT + PERMANENT + UNEXPECTED, ids=repr)
def test_every_error_has_one_kind(exc: Exception) -> None:
    expected = (Kind.TRANSIENT if exc in TRANSIENT else
                Kind.PERMANENT if exc in PERMANENT else Kind.UNEXPECTED)
    assert classify(exc) is expected


@pytest.mark.parametrize("exc", PERMANENT, ids=repr)
def test_a_permanent_error_is_given_up_on_at_once(exc: Exception) -> None:
    for policy in (RetryPolicy(), RetryPolicy(max_attempts=10)):
        decision = policy.decide(exc, 1)
        assert decision == GiveUp("permanent") and decision.permanent


@pytest.mark.parametrize("exc", TRANSIENT, ids=repr)
def test_a_transient_error_is_retried_while_attempts_last(exc: Exception) -> None:
    unbounded, bounded = RetryPolicy(cap=1.0), RetryPolicy(cap=1.0, max_attempts=3)
    for attempt in (1, 5, 50, 5000):
        decision = unbounded.decide(exc, attempt)
        assert isinstance(decision, Retry) and 0.0 <= decision.delay <= 1.0
    assert [type(bounded.decide(exc, n)) for n in (1, 2, 3, 4)] == [Retry, Retry, GiveUp, GiveUp]
    assert bounded.decide(exc, 3) == GiveUp("transient_exhausted")


@pytest.mark.parametrize("exc", UNEXPECTED, ids=repr)
def test_an_unexpected_error_is_retried_a_few_times_then_given_up_on(exc: Exception) -> None:
    policy = RetryPolicy(max_unexpected_attempts=3)
    assert [type(policy.decide(exc, n)) for n in (1, 2, 3)] == [Retry, Retry, GiveUp]
    decision = policy.decide(exc, 3)
    assert decision == GiveUp("unexpected_exhausted")
    assert isinstance(decision, GiveUp) and not decision.permanent
    # A smaller max_attempts bounds it too.
    assert RetryPolicy(max_attempts=2, max_unexpected_attempts=5).decide(exc, 2) == GiveUp(
        "unexpected_exhausted")


def test_a_transient_errors_retry_after_is_the_delay() -> None:
    policy = RetryPolicy(base=0.5, cap=20.0)
    assert policy.decide(TransientError("busy", retry_after=4.0), 1) == Retry(4.0)
    assert policy.decide(TransientError("busy", retry_after=400.0), 1) == Retry(20.0)
    assert policy.decide(UploadDropped(), 9) == Retry(1.0)


def test_invalid_input_never_says_retry_and_transient_errors_say_when() -> None:
    """What a client sees: 422 without a word of retrying, or 503 with Retry-After."""
    for exc in PERMANENT[1:]:  # a bare PermanentError is ours to fix: a 500
        resp = for_error(exc, retry_after=5)
        assert resp.status_code == 422 and "retry-after" not in resp.headers
        assert b"retry" not in bytes(resp.body).lower()
    dropped = for_error(UploadDropped(), retry_after=5)
    assert dropped.status_code == 503 and dropped.headers["retry-after"] == "1"
    assert for_error(TransientError("x"), retry_after=5).headers["retry-after"] == "5"
