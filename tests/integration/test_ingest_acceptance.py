"""Acceptance of an upload (services/ingest/handlers.py) against the real
MongoDB and Kafka APIs: races with a retry's withdraw, pages and events."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from services.ingest.handlers import Deps, IdempotencyConflict, _withdraw, accept_upload
from services.ingest.settings import Settings
from shared.errors import TransientError
from shared.events import ImageRequested, decode_as, now_utc
from shared.kafka import EventPublisher, ensure_topics
from shared.mongo import Store, db_now, make_client
from shared.products import find_product, id_range
from shared.topics import Topic

pytestmark = pytest.mark.stack


Hook = Callable[[Sequence[tuple[bytes, bytes]]], Awaitable[None]]


class HookedPublisher(EventPublisher):
    """The real publisher; a hook runs before each publish of image events
    (``before_images``) or of request.created (``before_created``)."""

    before_images: Hook | None = None
    before_created: Hook | None = None
    image_events = 0

    async def publish_encoded(self, topic: Topic, messages: Sequence[tuple[bytes, bytes]]
                              ) -> None:
        if topic is Topic.IMAGE_REQUESTED:
            if self.before_images is not None:
                await self.before_images(messages)
            self.image_events += len(messages)
        if topic is Topic.REQUEST_CREATED and self.before_created is not None:
            await self.before_created(messages)
        await super().publish_encoded(topic, messages)


class CountingStream(io.BytesIO):
    bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.fixture
async def deps(stack_env: dict[str, str]) -> AsyncIterator[Deps]:
    fields: dict[str, Any] = {k.removeprefix("IMGPIPE_").lower(): v
                              for k, v in stack_env.items()}
    fields.update(mongo_db=f"acc{uuid.uuid4().hex[:8]}",
                  topic_prefix=f"acc{uuid.uuid4().hex[:8]}", publish_batch=100)
    s = Settings(**fields)
    await ensure_topics(s)
    client = make_client(s)
    store = Store.from_client(client, s)
    await store.ensure_indexes()
    publisher = HookedPublisher(s, client_id="test-acceptance")
    await publisher.start()
    try:
        yield Deps(s, store, publisher)
    finally:
        await publisher.stop()
        await client.drop_database(s.mongo_db)
        await client.close()


@pytest.fixture
def publisher(deps: Deps) -> HookedPublisher:
    assert isinstance(deps.publisher, HookedPublisher)
    return deps.publisher


async def assert_stands(deps: Deps, request_id: str) -> None:
    """Accepted, not withdrawn, its product page stored."""
    request = await deps.store.requests.find_one({"_id": request_id})
    assert request is not None and request["accepted"] and not request.get("withdrawn")
    assert await deps.store.product_pages.count_documents({"_id": id_range(request_id)}) == 1


def csv_of(rows: int, *, reverse: bool = False) -> CountingStream:
    serials = range(rows, 0, -1) if reverse else range(1, rows + 1)
    lines = ["S. No.,Product Name,Input Image Urls"] + [
        f'{i},P{i},"https://img.example/{i}/a.jpg, https://img.example/{i}/b.jpg"'
        for i in serials]
    return CountingStream(("\n".join(lines) + "\n").encode())


async def accept(deps: Deps, rows: int, key: str | None = None) -> Any:
    return await accept_upload(deps, csv_of(rows), filename="f.csv", webhook_url=None,
                               idempotency_key=key)


@pytest.mark.parametrize("once", [False, True], ids=["read-twice", "parsed-once"])
@pytest.mark.parametrize("rows", [1, 99, 100, 101, 250])
async def test_every_row_is_stored_in_pages_and_every_url_published(
        deps: Deps, publisher: HookedPublisher, rows: int, once: bool) -> None:
    deps.settings.parse_once_max_bytes = 1 << 20 if once else 0
    stream = csv_of(rows)
    accepted = await accept_upload(deps, stream, filename="f.csv", webhook_url=None,
                                   idempotency_key=None)
    # read by the digest and by validation, and a third time only if not kept
    assert stream.bytes_read == len(stream.getvalue()) * (2 if once else 3)
    request = await deps.store.requests.find_one({"_id": accepted.request_id})
    assert request is not None and request["accepted"] and request["serial_offset"] == 1
    assert request["serial_buckets"] is None
    pages = [p async for p in deps.store.product_pages.find(
        {"_id": id_range(accepted.request_id)}).sort("_id", 1)]
    serials = [r["serial"] for p in pages for r in p["rows"]]
    assert serials == list(range(1, rows + 1))
    assert all(len(p["rows"]) == request["page_rows"] for p in pages[:-1])
    assert publisher.image_events == 2 * rows


async def test_an_image_event_is_published_only_once_its_row_is_stored(
        deps: Deps, publisher: HookedPublisher) -> None:
    checked: list[int] = []

    async def rows_are_stored(messages: Sequence[tuple[bytes, bytes]]) -> None:
        serials = {decode_as(value, ImageRequested).serial for _, value in messages}
        if not serials:
            return
        rid = decode_as(messages[0][1], ImageRequested).request_id
        stored = {r["serial"] async for p in deps.store.product_pages.find(
            {"_id": id_range(rid)}) for r in p["rows"]}
        assert serials <= stored
        checked.extend(serials)

    publisher.before_images = rows_are_stored
    await accept(deps, 1000)
    assert sorted(checked) == list(range(1, 1001))


@pytest.mark.parametrize("rows", [150, 1000])
async def test_an_upload_withdrawn_by_a_retry_while_being_accepted_is_not_answered_202(
        deps: Deps, publisher: HookedPublisher, rows: int) -> None:
    """A retry (same Idempotency-Key) decided this attempt was dead and withdrew it;
    the attempt then resumes: it publishes nothing more, the client gets an
    error, and no pages remain (also none from inserts that were in flight)."""
    seen: list[str] = []
    published_by_then: list[int] = []

    async def withdraw_it(messages: Sequence[tuple[bytes, bytes]]) -> None:
        if not seen:
            doc = await deps.store.requests.find_one({"idempotency_key": "k1"})
            assert doc is not None
            seen.append(doc["_id"])
            assert await _withdraw(deps, doc["_id"], unless_accepted=True)
            # this publish was let through before the withdraw: nothing after it
            published_by_then.append(publisher.image_events + len(messages))

    publisher.before_images = withdraw_it
    with pytest.raises(TransientError):
        await accept(deps, rows, key="k1")
    assert publisher.image_events == published_by_then[0] < 2 * rows
    request = await deps.store.requests.find_one({"_id": seen[0]})
    assert request is not None and request["withdrawn"] and not request["accepted"]
    assert await deps.store.product_pages.count_documents({"_id": id_range(seen[0])}) == 0


async def test_an_id_given_to_a_retry_is_never_withdrawn_by_the_first_attempt(
        deps: Deps, publisher: HookedPublisher) -> None:
    """The first attempt is accepted but cannot publish request.created; a retry
    with the same key, meanwhile, is answered 202 with its id. The first attempt
    must then not withdraw it: it answers with the same id."""
    retried: list[Any] = []

    async def retry_then_fail(messages: Sequence[tuple[bytes, bytes]]) -> None:
        if retried:
            return  # the retry's own publish goes through
        retried.append(None)
        retried.append(await accept(deps, 3, key="k2"))
        raise TransientError("broker away", code="kafka_error")

    publisher.before_created = retry_then_fail
    first = await accept(deps, 3, key="k2")
    assert first.request_id == retried[1].request_id
    await assert_stands(deps, first.request_id)


async def test_a_retry_whose_own_publish_fails_gives_no_id_and_the_upload_is_withdrawn(
        deps: Deps, publisher: HookedPublisher) -> None:
    """request.created fails for both the first attempt and the retry: neither
    client gets an id, so the request must not stand (it would never finish)."""
    retry_failed: list[Exception] = []
    retried: list[bool] = []

    async def broker_away(messages: Sequence[tuple[bytes, bytes]]) -> None:
        if not retried:  # the first attempt's publish: a retry arrives meanwhile
            retried.append(True)
            try:
                await accept(deps, 3, key="k4")
            except TransientError as exc:
                retry_failed.append(exc)
        raise TransientError("broker away", code="kafka_error")

    publisher.before_created = broker_away
    with pytest.raises(TransientError):
        await accept(deps, 3, key="k4")
    assert len(retry_failed) == 1
    requests = [r async for r in deps.store.requests.find({})]
    assert len(requests) == 1 and requests[0]["withdrawn"] and not requests[0]["accepted"]
    assert not requests[0].get("answered")


async def test_the_heartbeat_moves_on_with_every_batch(
        deps: Deps, publisher: HookedPublisher) -> None:
    beats: list[Any] = []

    async def record(messages: Sequence[tuple[bytes, bytes]]) -> None:
        doc = await deps.store.requests.find_one({}, {"heartbeat_at": 1})
        assert doc is not None
        beats.append(doc["heartbeat_at"])

    publisher.before_images = record
    await accept(deps, 1000)
    assert len(beats) >= 4 and beats == sorted(beats) and beats[-1] > beats[0]


async def test_staleness_is_judged_on_the_database_clock(
        deps: Deps, publisher: HookedPublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry whose host clock runs an hour ahead must not take a live attempt
    for dead; one that finds no heartbeat for 10 minutes (database clock) does."""
    answers: list[Any] = []

    async def retry(messages: Sequence[tuple[bytes, bytes]]) -> None:
        if answers:
            return
        fast = now_utc() + timedelta(hours=1)
        with monkeypatch.context() as m:
            m.setattr("services.ingest.handlers.now_utc", lambda: fast)
            try:
                await accept(deps, 3, key="k3")
            except IdempotencyConflict as exc:
                answers.append(exc)

    publisher.before_images = retry
    first = await accept(deps, 3, key="k3")
    assert isinstance(answers[0], IdempotencyConflict)  # "still being accepted"
    # Now make the (accepted) first attempt look like a dead, unaccepted one.
    await deps.store.requests.update_one({"_id": first.request_id}, {"$set": {
        "accepted": False, "heartbeat_at": await db_now(deps.store) - timedelta(minutes=11)}})
    publisher.before_images = None
    again = await accept(deps, 3, key="k3")
    assert again.request_id != first.request_id
    old = await deps.store.requests.find_one({"_id": first.request_id})
    assert old is not None and old["withdrawn"]


async def test_a_stale_attempt_accepted_meanwhile_is_not_withdrawn(deps: Deps) -> None:
    accepted = await accept(deps, 3)
    assert not await _withdraw(deps, accepted.request_id, unless_accepted=True)
    await assert_stands(deps, accepted.request_id)


async def test_serials_that_do_not_follow_rows_get_a_directory_removed_on_withdraw(
        deps: Deps) -> None:
    accepted = await accept_upload(deps, csv_of(2500, reverse=True), filename="f.csv",
                                   webhook_url=None, idempotency_key=None)
    rid = accepted.request_id
    request = await deps.store.requests.find_one({"_id": rid})
    assert request is not None
    assert (request["serial_offset"], request["serial_buckets"]) == (None, 3)
    for serial in (1, 1250, 2500):
        found = await find_product(deps.store, request, serial)
        assert found is not None and found["serial"] == serial
    assert await _withdraw(deps, rid)  # as if its request.created could not be published
    for coll in (deps.store.product_pages, deps.store.product_serials):
        assert await coll.count_documents({"_id": id_range(rid)}) == 0
