"""The Faust agents' retry policy (services/aggregator/app.py: with_retries)."""

from __future__ import annotations

import pytest

import services.aggregator.app as agg
from shared.errors import InvalidInputError, TransientError
from shared.retry import MAX_UNEXPECTED_ATTEMPTS


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agg, "backoff", lambda attempt: 0)


def failing(exc: Exception, times: int) -> tuple[list[int], object]:
    calls: list[int] = []

    async def call() -> None:
        calls.append(1)
        if len(calls) <= times:
            raise exc

    return calls, call


async def test_an_outage_is_retried_until_it_passes() -> None:
    calls, call = failing(TransientError("mongo away"), times=MAX_UNEXPECTED_ATTEMPTS + 5)
    await agg.with_retries(call)  # type: ignore[arg-type]
    assert len(calls) == MAX_UNEXPECTED_ATTEMPTS + 6


async def test_a_bug_is_given_up_after_a_few_attempts() -> None:
    calls, call = failing(KeyError("status"), times=100)
    with pytest.raises(KeyError):
        await agg.with_retries(call)  # type: ignore[arg-type]
    assert len(calls) == MAX_UNEXPECTED_ATTEMPTS


async def test_an_invalid_event_is_given_up_at_once_but_a_dead_letter_never() -> None:
    calls, call = failing(InvalidInputError("bad"), times=1)
    with pytest.raises(InvalidInputError):
        await agg.with_retries(call)  # type: ignore[arg-type]
    assert len(calls) == 1
    calls, call = failing(KeyError("x"), times=MAX_UNEXPECTED_ATTEMPTS + 2)
    await agg.with_retries(call, park=False)  # type: ignore[arg-type]
    assert len(calls) == MAX_UNEXPECTED_ATTEMPTS + 3
