"""ImageProcessor's decisions: what becomes a failed image, what is retried,
what is done once. The engine, fetcher, store and broker are stand-ins here
(the real ones are covered by their own tests and the end-to-end suite);
what is under test is only this class's logic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.processor.handlers import ImageProcessor
from shared.errors import FetchRejected, TransientError
from shared.events import ImageDone, ImageRequested, PositionRef, image_id_for


@dataclass
class Calls:
    fetches: list[str] = field(default_factory=list)
    published: list[ImageDone] = field(default_factory=list)
    pool_error: Exception | None = None
    fetch_error: Exception | None = None


@dataclass
class Fetched:
    data: bytes


@dataclass
class Result:
    data: bytes = b"out"
    format: str = "JPEG"
    content_type: str = "image/jpeg"
    extension: str = "jpg"
    quality_in: int = 80
    quality_out: int = 40
    quality_method: str = "standard_tables_exact"
    bytes_in: int = 10
    bytes_out: int = 3
    width: int = 1
    height: int = 1
    kept_original: bool = False
    source_format: str = "JPEG"


def processor(calls: Calls) -> ImageProcessor:
    class Fetcher:
        async def fetch(self, url: str) -> Fetched:
            calls.fetches.append(url)
            await asyncio.sleep(0.01)
            if calls.fetch_error:
                raise calls.fetch_error
            return Fetched(b"in")

    class Pool:
        async def compress(self, data: bytes) -> Result:
            if calls.pool_error:
                raise calls.pool_error
            return Result()

    class Store:
        async def put(self, key: str, data: bytes, content_type: str) -> str:
            return f"http://s3/{key}"

    class Publisher:
        async def publish(self, event: Any) -> None:
            calls.published.append(event)

    return ImageProcessor(Fetcher(), Pool(), Store(), Publisher())  # type: ignore[arg-type]


ALSO = [PositionRef(row=5, serial=6, position=0), PositionRef(row=9, serial=10, position=2)]


def requested(url: str, serial: int = 1, replay_id: str | None = None,
              also: list[PositionRef] | None = None) -> ImageRequested:
    return ImageRequested(request_id="r", image_id=image_id_for("r", url), serial=serial,
                          product_name="P", position=0, url=url, replay_id=replay_id,
                          also=also or [])


async def test_our_own_outage_is_retried_not_recorded_as_a_failed_image() -> None:
    calls = Calls(pool_error=TransientError("no worker", code="engine_unavailable"))
    proc = processor(calls)
    with pytest.raises(TransientError):
        await proc.handle(requested("http://x/a.jpg"))
    assert calls.published == []
    calls.pool_error = None  # the engine is back: the retry really does the work
    await proc.handle(requested("http://x/a.jpg"))
    assert [e.status for e in calls.published] == ["succeeded"]
    assert len(calls.fetches) == 2


async def test_a_bad_image_is_a_failed_result_with_its_code() -> None:
    calls = Calls(fetch_error=FetchRejected("answered 404", code="http_404"))
    await processor(calls).handle(requested("http://x/missing.jpg"))
    [done] = calls.published
    assert (done.status, done.error_code, done.output_url) == ("failed", "http_404", None)


async def test_identical_urls_are_fetched_once_unless_replayed() -> None:
    calls = Calls()
    proc = processor(calls)
    await asyncio.gather(*(proc.handle(requested("http://x/a.jpg", serial=s))
                           for s in (1, 2, 3)))
    assert len(calls.fetches) == 1
    assert sorted(e.serial for e in calls.published) == [1, 2, 3]
    assert len({e.output_url for e in calls.published}) == 1
    await proc.handle(requested("http://x/a.jpg", replay_id="run-2"))
    assert len(calls.fetches) == 2


async def test_a_message_given_up_on_is_reported_as_a_failed_image() -> None:
    from services.processor.handlers import report_unexpected

    published: list[ImageDone] = []

    class Publisher:
        async def publish(self, event: Any) -> None:
            published.append(event)

    raw = requested("http://x/a.jpg", serial=4, also=ALSO).encode()
    await report_unexpected(Publisher(), raw, KeyError("width"))  # type: ignore[arg-type]
    [done] = published
    assert (done.serial, done.status, done.error_code) == (4, "failed", "internal_error")
    assert done.also == ALSO  # every position the event stood for is reported
    assert "KeyError" in (done.error_message or "")


async def test_the_result_applies_to_every_position_the_event_stands_for() -> None:
    calls = Calls()
    await processor(calls).handle(requested("http://x/a.jpg", also=ALSO))
    [done] = calls.published
    assert done.also == ALSO and done.status == "succeeded"
    assert len(calls.fetches) == 1
