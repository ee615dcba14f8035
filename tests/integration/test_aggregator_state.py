"""The aggregator's MongoDB bookkeeping under at-least-once delivery (real MongoDB API)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.aggregator.app import KeyedLocks
from services.aggregator.handlers import (
    DEAD_LETTERS_KEPT,
    note_dead_letter,
    record_image_done,
    record_request_created,
)
from shared.errors import TransientError
from shared.events import ImageDone, RequestCompleted, RequestCreated, now_utc
from shared.mongo import Store, db_now, position_id
from shared.products import PageBuilder, iter_products
from shared.requests import Status, new_request_doc

pytestmark = pytest.mark.stack



class Published(list[RequestCompleted]):
    async def __call__(self, ev: RequestCompleted) -> None:
        self.append(ev)


async def new_request(store: Store, images: int = 2) -> str:
    rid = str(uuid.uuid4())
    await record_request_created(store, RequestCreated(
        request_id=rid, product_count=1, image_count=images, created_at=now_utc()))
    pages = PageBuilder(rid, page_rows=10)
    pages.add(1, "P", 2, [f"http://in/{i}.jpg" for i in range(images)])
    await store.product_pages.insert_one(pages.flush())
    await store.requests.update_one({"_id": rid}, {"$set": {"page_rows": 10}})
    return rid


LOCKS = KeyedLocks()


async def like_the_consumer(store: Store, ev: ImageDone, publish: Published) -> None:
    """As the aggregator's consumer does: a request's events one at a time
    (``KeyedLocks``: a recount must not race an increment of its request), the
    lock released between retries of a TransientError."""
    for _ in range(100):
        try:
            async with LOCKS.hold(ev.request_id):
                await record_image_done(store, ev, publish)
            return
        except TransientError:
            await asyncio.sleep(0.05)
    raise AssertionError("never settled")


def done(rid: str, position: int, ok: bool = True, **extra: Any) -> ImageDone:
    return ImageDone(request_id=rid, image_id=f"img{position}", serial=1, position=position,
                     url=f"http://x/{position}.jpg", status="succeeded" if ok else "failed",
                     output_url=f"http://out/{position}.jpg" if ok else None,
                     error_code=None if ok else "http_404", **extra)


async def test_a_duplicate_image_done_counts_once(store: Store) -> None:
    rid, published = await new_request(store, images=2), Published()
    for _ in range(3):
        await record_image_done(store, done(rid, 0), published)
    req = await store.requests.find_one({"_id": rid})
    assert req is not None
    assert (req["succeeded"], req["failed"], req["status"]) == (1, 0, "PROCESSING")
    assert req["started_at"] is not None
    assert published == []


async def test_lost_increment_is_recovered_on_redelivery(store: Store) -> None:
    """Crash between the guard insert and the counter update: the redelivered
    event finds the duplicate and recounts from the images collection."""
    rid, published = await new_request(store, images=1), Published()
    ev = done(rid, 0)
    await store.images.insert_one({"_id": position_id(rid, 1, 0), "request_id": rid,
                                   "serial": 1, "position": 0, "status": "succeeded"})
    await record_image_done(store, ev, published)
    req = await store.requests.find_one({"_id": rid})
    assert req is not None and req["succeeded"] == 1 and req["status"] == "COMPLETED"
    assert [p.status for p in published] == ["COMPLETED"]


async def test_completion_is_published_exactly_once_under_concurrent_duplicates(
        store: Store) -> None:
    rid, published = await new_request(store, images=2), Published()
    events = [done(rid, 0), done(rid, 1, ok=False)] * 3
    await asyncio.gather(*(like_the_consumer(store, e, published) for e in events))
    req = await store.requests.find_one({"_id": rid})
    assert req is not None
    assert (req["succeeded"], req["failed"]) == (1, 1)
    assert req["status"] == "COMPLETED_WITH_ERRORS" and req["completion_published"]
    assert len(published) == 1
    assert (published[0].succeeded, published[0].failed, published[0].total) == (1, 1, 2)
    products = [p async for p in iter_products(store, req)]
    assert [p.output_urls for p in products] == [["http://out/0.jpg", None]]


async def test_an_unpublished_completion_is_published_on_redelivery(store: Store) -> None:
    rid = await new_request(store, images=1)

    async def broker_down(ev: RequestCompleted) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        await record_image_done(store, done(rid, 0), broker_down)
    published = Published()
    await record_image_done(store, done(rid, 0), published)  # the redelivery
    assert [p.status for p in published] == ["COMPLETED"]
    await record_image_done(store, done(rid, 0), published)  # and once more: nothing new
    assert len(published) == 1


async def test_all_failed_is_failed(store: Store) -> None:
    rid, published = await new_request(store, images=2), Published()
    await record_image_done(store, done(rid, 0, ok=False), published)
    await record_image_done(store, done(rid, 1, ok=False), published)
    assert [p.status for p in published] == ["FAILED"]


async def test_request_created_replay_never_overwrites_live_state(store: Store) -> None:
    rid, published = await new_request(store, images=2), Published()
    await record_image_done(store, done(rid, 0), published)
    await record_request_created(store, RequestCreated(
        request_id=rid, product_count=1, image_count=2, created_at=now_utc()))
    req = await store.requests.find_one({"_id": rid})
    assert req is not None and req["succeeded"] == 1


async def test_an_expired_lease_is_taken_over(store: Store) -> None:
    """The lease holder died after finishing the request but before publishing."""
    rid, published = await new_request(store, images=1), Published()
    await store.images.insert_one({"_id": position_id(rid, 1, 0), "request_id": rid,
                                   "serial": 1, "position": 0, "status": "succeeded"})
    await store.requests.update_one({"_id": rid}, {"$set": {
        "status": "COMPLETED", "succeeded": 1, "completed_at": now_utc(),
        "publish_lease_until": now_utc() + timedelta(seconds=60)}})
    with pytest.raises(TransientError):  # the lease is still held: retry later
        await record_image_done(store, done(rid, 0), published)
    await store.requests.update_one({"_id": rid}, {"$set": {
        "publish_lease_until": now_utc() - timedelta(seconds=1)}})
    await record_image_done(store, done(rid, 0), published)
    assert [p.status for p in published] == ["COMPLETED"]


async def test_the_publication_lease_follows_the_database_clock(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An aggregator whose clock runs an hour ahead must not take over a live lease."""
    rid, published = await new_request(store, images=1), Published()
    await store.images.insert_one({"_id": position_id(rid, 1, 0), "request_id": rid,
                                   "serial": 1, "position": 0, "status": "succeeded"})
    now = await db_now(store)
    await store.requests.update_one({"_id": rid}, {"$set": {
        "status": "COMPLETED", "succeeded": 1, "completed_at": now,
        "publish_lease_until": now + timedelta(seconds=60)}})
    fast = now_utc() + timedelta(hours=1)
    monkeypatch.setattr("services.aggregator.handlers.now_utc", lambda: fast)
    with pytest.raises(TransientError):
        await record_image_done(store, done(rid, 0), published)
    assert published == []


async def test_the_publication_lease_is_taken_on_the_database_clock(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the database's clock an hour behind the host's, the lease written
    (seen while publishing) must be an hour behind too."""
    real_db_now = db_now

    async def db_behind(s: Store) -> datetime:
        return await real_db_now(s) - timedelta(hours=1)

    monkeypatch.setattr("services.aggregator.handlers.db_now", db_behind)
    rid, leases = await new_request(store, images=1), []

    async def publish(ev: RequestCompleted) -> None:
        doc = await store.requests.find_one({"_id": rid})
        assert doc is not None
        leases.append(doc["publish_lease_until"])

    await record_image_done(store, done(rid, 0), publish)
    assert len(leases) == 1 and leases[0] < now_utc() - timedelta(minutes=50)


async def test_images_recorded_before_the_request_exists_are_counted(store: Store) -> None:
    """A replay into an empty database: image.done can overtake request.created."""
    rid, published = str(uuid.uuid4()), Published()
    await record_image_done(store, done(rid, 0), published)
    await record_image_done(store, done(rid, 1, ok=False), published)
    assert published == []
    await record_request_created(store, RequestCreated(
        request_id=rid, product_count=1, image_count=2, created_at=now_utc()), published)
    req = await store.requests.find_one({"_id": rid})
    assert req is not None and (req["succeeded"], req["failed"]) == (1, 1)
    assert [p.status for p in published] == ["COMPLETED_WITH_ERRORS"]


async def test_a_request_of_no_images_completes_on_its_created_event(store: Store) -> None:
    rid, published = str(uuid.uuid4()), Published()
    await store.requests.insert_one(new_request_doc(
        rid, product_count=1, image_count=0, webhook_url=None, created_at=now_utc(),
        filename=None, status=Status.QUEUED))
    await record_request_created(store, RequestCreated(
        request_id=rid, product_count=1, image_count=0, created_at=now_utc()), published)
    assert [p.status for p in published] == ["COMPLETED"]


async def test_duplicates_of_counted_images_do_not_recount(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaying a big request must stay linear: no aggregate per duplicate."""
    import services.aggregator.handlers as handlers

    recounts: list[str] = []
    real_recount = handlers.recount

    async def counting_recount(st: Store, rid: str) -> dict[str, Any] | None:
        recounts.append(rid)
        return await real_recount(st, rid)

    rid, published = await new_request(store, images=2), Published()
    monkeypatch.setattr(handlers, "recount", counting_recount)
    await record_image_done(store, done(rid, 0), published)
    for _ in range(5):
        await record_image_done(store, done(rid, 0), published)
    assert recounts == []
    image = await store.images.find_one({"_id": position_id(rid, 1, 0)})
    assert image is not None and image["counted"] is True


async def test_after_a_recreate_duplicates_do_not_recount(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import services.aggregator.handlers as handlers

    rid, published = str(uuid.uuid4()), Published()
    await record_image_done(store, done(rid, 0), published)  # before the request exists
    await record_request_created(store, RequestCreated(
        request_id=rid, product_count=1, image_count=2, created_at=now_utc()), published)
    recounts: list[str] = []
    real_recount = handlers.recount

    async def counting_recount(st: Store, r: str) -> dict[str, Any] | None:
        recounts.append(r)
        return await real_recount(st, r)

    monkeypatch.setattr(handlers, "recount", counting_recount)
    for _ in range(3):
        await record_image_done(store, done(rid, 0), published)
    assert recounts == []
    req = await store.requests.find_one({"_id": rid})
    assert req is not None and req["succeeded"] == 1


async def test_a_dead_letter_is_noted_once_per_event_and_the_list_is_bounded(
        store: Store) -> None:
    rid = await new_request(store, images=1)
    first = done(rid, 0)
    await note_dead_letter(store, first, ValueError("bug"))
    await note_dead_letter(store, first, ValueError("bug"))  # a redelivery
    req = await store.requests.find_one({"_id": rid})
    assert req is not None and req["dead_letter_count"] == 1
    assert req["dead_letters"][0]["event_id"] == first.event_id
    # an unexpected error's details stay in the log, not in the public status API
    assert req["dead_letters"][0]["error"] == (
        "internal_error: unexpected ValueError (see the aggregator's log)")
    others = [done(rid, 0) for _ in range(DEAD_LETTERS_KEPT + 5)]
    for ev in others:
        await note_dead_letter(store, ev, ValueError("bug"))
    req = await store.requests.find_one({"_id": rid})
    assert req is not None and req["dead_letter_count"] == DEAD_LETTERS_KEPT + 6
    assert [d["event_id"] for d in req["dead_letters"]] == [
        e.event_id for e in others[-DEAD_LETTERS_KEPT:]]
