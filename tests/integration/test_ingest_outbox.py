"""The outbox (services/ingest/handlers.py, pages.py) and the relay (relay.py)
against the real MongoDB and Kafka APIs: an upload is answered once it is
stored; the relay publishes it from the stored pages, fairly, resuming after
a crash; a failed or abandoned upload leaves nothing behind."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

import services.ingest.pages as pages_mod
from services.ingest.handlers import (
    Deps,
    IdempotencyConflict,
    IdempotencyInProgress,
    accept_upload,
)
from services.ingest.reconciler import Reconciler
from services.ingest.relay import Relay
from services.ingest.settings import Settings
from shared.errors import TransientError
from shared.events import ImageDone, ImageRequested, RequestCreated, decode
from shared.kafka import EventPublisher, ensure_topics
from shared.mongo import Store, db_now, make_client, position_id
from shared.products import id_range
from shared.requests import RELAY_PENDING, Status, new_request_doc
from shared.retry import RetryPolicy
from shared.topics import Topic

pytestmark = pytest.mark.stack


class RecordingPublisher(EventPublisher):
    """The real publisher, remembering what it published; ``fail_after``: raise
    (as a crash would) once that many image events were published."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[Any] = []
        self.fail_after: int | None = None

    async def publish_encoded(self, topic: Topic, messages: Sequence[tuple[bytes, bytes]]
                              ) -> None:
        await super().publish_encoded(topic, messages)
        self.events += [decode(v) for _, v in messages]
        images = sum(isinstance(e, ImageRequested) for e in self.events)
        if self.fail_after is not None and images >= self.fail_after:
            raise TransientError("the relay crashed here", code="crash")


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
    fields.update(mongo_db=f"out{uuid.uuid4().hex[:8]}",
                  topic_prefix=f"out{uuid.uuid4().hex[:8]}", publish_batch=100)
    s = Settings(**fields)
    await ensure_topics(s, [Topic.REQUEST_CREATED, Topic.IMAGE_REQUESTED, Topic.IMAGE_DONE])
    client = make_client(s)
    store = Store.from_client(client, s)
    await store.ensure_indexes()
    publisher = RecordingPublisher(s, client_id="test-outbox")
    await publisher.start()
    try:
        yield Deps(s, store, publisher)
    finally:
        await publisher.stop()
        await client.drop_database(s.mongo_db)
        await client.close()


def relay_of(deps: Deps, **settings: Any) -> Relay:
    s = deps.settings.model_copy(update=settings)
    assert isinstance(deps.publisher, RecordingPublisher)
    return Relay(s, deps.store, deps.publisher)


def recorded(deps: Deps) -> list[Any]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return deps.publisher.events


def csv_of(rows: int, urls_per_row: int = 2) -> CountingStream:
    lines = ["S. No.,Product Name,Input Image Urls"] + [
        f'{i},P{i},"{", ".join(f"https://img.example/{i}/{k}.jpg" for k in range(urls_per_row))}"'
        for i in range(1, rows + 1)]
    return CountingStream(("\n".join(lines) + "\n").encode())


async def accept(deps: Deps, rows: int, key: str | None = None, urls_per_row: int = 2,
                 tenant: str = "t") -> Any:
    return await accept_upload(deps, csv_of(rows, urls_per_row), tenant=tenant,
                               filename="f.csv", webhook_url=None, idempotency_key=key)


async def relay_all(relay: Relay, rounds: int = 1000) -> None:
    for _ in range(rounds):
        if not await relay.round():
            return


@pytest.mark.parametrize("once", [False, True], ids=["read-twice", "parsed-once"])
@pytest.mark.parametrize("rows", [1, 99, 100, 101, 250])
async def test_an_upload_is_stored_whole_before_its_202_and_nothing_is_published(
        deps: Deps, rows: int, once: bool) -> None:
    deps.settings.parse_once_max_bytes = 1 << 20 if once else 0
    stream = csv_of(rows)
    accepted = await accept_upload(deps, stream, tenant="t", filename="f.csv", webhook_url=None,
                                   idempotency_key=None)
    # read by the digest and by validation, and a third time only if not kept
    assert stream.bytes_read == len(stream.getvalue()) * (2 if once else 3)
    request = await deps.store.requests.find_one({"_id": accepted.request_id})
    assert request is not None and request["status"] == Status.QUEUED
    assert request[RELAY_PENDING] is True and request["stored_at"] is not None
    pages = [p async for p in deps.store.product_pages.find(
        {"_id": id_range(accepted.request_id)}).sort("_id", 1)]
    assert [r["serial"] for p in pages for r in p["rows"]] == list(range(1, rows + 1))
    assert all(len(p["rows"]) == request["page_rows"] for p in pages[:-1])
    assert recorded(deps) == []  # the relay publishes, not the upload
    assert deps.wake_relay.is_set()


async def test_the_relay_publishes_created_first_then_every_position_once_in_order(
        deps: Deps) -> None:
    accepted = await accept(deps, 230, urls_per_row=3)
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=100))
    events = recorded(deps)
    assert isinstance(events[0], RequestCreated) and events[0].page_rows is not None
    images = [e for e in events if isinstance(e, ImageRequested)]
    assert [(e.row, e.serial, e.position, e.url) for e in images] == [
        (row, row + 1, k, f"https://img.example/{row + 1}/{k}.jpg")
        for row in range(230) for k in range(3)]
    request = await deps.store.requests.find_one({"_id": accepted.request_id})
    assert request is not None and RELAY_PENDING not in request
    assert request["relay"]["published"] == 690 and request["relay"]["created_sent"]


async def test_a_relay_that_crashed_after_publishing_resumes_from_its_cursor(
        deps: Deps) -> None:
    await accept(deps, 120)  # 240 images
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    publisher.fail_after = 100  # dies after publishing a batch, before moving its cursor
    with pytest.raises(TransientError):
        await relay_all(relay_of(deps, relay_window=10_000, relay_batch=50))
    publisher.fail_after = None
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=50))  # a new instance
    positions = [(e.row, e.position) for e in recorded(deps) if isinstance(e, ImageRequested)]
    every = [(row, k) for row in range(120) for k in range(2)]
    assert sorted(set(positions)) == every  # nothing missing
    assert len(positions) == 240 + 50  # only the batch whose cursor move was lost, again


async def test_a_small_request_is_not_held_behind_a_big_ones_backlog(deps: Deps) -> None:
    big = await accept(deps, 500)  # 1,000 images, first in line
    small = await accept(deps, 2)  # 4 images
    relay = relay_of(deps, relay_window=40, relay_batch=25, relay_max_in_flight=1000)
    await relay_all(relay)
    by_request: dict[str, int] = {}
    for e in recorded(deps):
        if isinstance(e, ImageRequested):
            by_request[e.request_id] = by_request.get(e.request_id, 0) + 1
    assert by_request == {big.request_id: 40, small.request_id: 4}  # window full: it waits
    # Credits come back as images finish (the aggregator counts them).
    await deps.store.requests.update_one({"_id": big.request_id}, {"$set": {"succeeded": 30}})
    await relay_all(relay)
    assert sum(isinstance(e, ImageRequested) and e.request_id == big.request_id
               for e in recorded(deps)) == 70


def published_by_request(deps: Deps) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in recorded(deps):
        if isinstance(e, ImageRequested):
            counts[e.request_id] = counts.get(e.request_id, 0) + 1
    return counts


async def test_tenants_take_turns_so_one_with_many_requests_crowds_out_no_one(
        deps: Deps) -> None:
    many = [(await accept(deps, 100, tenant="many")).request_id for _ in range(3)]
    few = (await accept(deps, 2, tenant="few")).request_id  # 4 images, last to arrive
    # Room for 60 unfinished images in all: the tenants' first requests go first.
    await relay_all(relay_of(deps, relay_window=100, relay_batch=50, relay_max_in_flight=60))
    assert published_by_request(deps) == {many[0]: 50, few: 4, many[1]: 6}


async def test_a_tenant_has_a_window_of_its_own_over_all_its_requests(deps: Deps) -> None:
    many = [(await accept(deps, 100, tenant="many")).request_id for _ in range(3)]
    few = (await accept(deps, 2, tenant="few")).request_id
    relay = relay_of(deps, relay_window=100, relay_batch=50, relay_max_in_flight=1000,
                     relay_tenant_window=120)
    await relay_all(relay)
    assert published_by_request(deps) == {many[0]: 50, few: 4, many[1]: 50, many[2]: 20}
    # Its images finishing give the tenant its credit back.
    await deps.store.requests.update_one({"_id": many[1]}, {"$set": {"succeeded": 30}})
    await relay_all(relay)
    assert sum(published_by_request(deps)[r] for r in many) == 150


async def test_a_request_that_cannot_be_relayed_waits_out_a_backoff_and_holds_up_no_one(
        deps: Deps) -> None:
    broken, fine = await accept(deps, 3), await accept(deps, 2)
    await deps.store.product_pages.delete_many({"_id": id_range(broken.request_id)})
    assert isinstance(deps.publisher, RecordingPublisher)
    relay = Relay(deps.settings, deps.store, deps.publisher, retry=RetryPolicy(cap=60.0))
    for _ in range(5):
        await relay.round()
    created = [e.request_id for e in recorded(deps) if isinstance(e, RequestCreated)]
    assert created.count(broken.request_id) == 1  # tried once, then left for 60 s
    assert sum(isinstance(e, ImageRequested) and e.request_id == fine.request_id
               for e in recorded(deps)) == 4


async def test_kafka_never_holds_more_unfinished_images_than_the_global_cap(
        deps: Deps) -> None:
    for _ in range(5):
        await accept(deps, 50)
    await relay_all(relay_of(deps, relay_window=1000, relay_batch=1000,
                             relay_max_in_flight=120))
    assert sum(isinstance(e, ImageRequested) for e in recorded(deps)) == 120
    assert sum(isinstance(e, RequestCreated) for e in recorded(deps)) == 5


async def test_a_failure_while_storing_leaves_no_request_and_no_pages(
        deps: Deps, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = pages_mod.insert_pages, []

    async def fail_on_the_third(store: Store, docs: list[dict[str, Any]]) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise TransientError("MongoDB went away", code="mongo_away")
        await real(store, docs)

    monkeypatch.setattr(pages_mod, "insert_pages", fail_on_the_third)
    with pytest.raises(TransientError):
        await accept(deps, 2000, key="k-fail")
    assert await deps.store.requests.count_documents({}) == 0
    assert await deps.store.product_pages.count_documents({}) == 0
    monkeypatch.setattr(pages_mod, "insert_pages", real)
    again = await accept(deps, 2000, key="k-fail")  # the key is free again
    assert again.product_count == 2000


async def test_idempotency_keys_answer_the_same_request_or_say_why_not(deps: Deps) -> None:
    first = await accept(deps, 3, key="k1")
    assert (await accept(deps, 3, key="k1")).request_id == first.request_id
    assert await deps.store.requests.count_documents({}) == 1
    with pytest.raises(IdempotencyConflict) as err:  # another file under the same key
        await accept(deps, 4, key="k1")
    assert "retry" not in err.value.message  # invalid input: a new key, not a retry


async def test_a_key_still_being_received_says_retry_and_an_abandoned_one_is_taken_over(
        deps: Deps) -> None:
    stream = csv_of(3)
    from services.ingest.handlers import file_digest

    sha = file_digest(stream)
    now = await db_now(deps.store)
    await deps.store.requests.insert_one(new_request_doc(
        "live", product_count=3, image_count=6, webhook_url=None, created_at=now,
        filename=None, idempotency_key="k2", file_sha256=sha, tenant="t") | {"updated_at": now})
    with pytest.raises(IdempotencyInProgress) as err:
        await accept(deps, 3, key="k2")
    assert err.value.retry_after
    stale = now - timedelta(seconds=deps.settings.receiving_stale_seconds + 5)
    await deps.store.requests.update_one({"_id": "live"}, {"$set": {"updated_at": stale}})
    await deps.store.product_pages.insert_one({"_id": "live:000000000", "rows": []})
    taken = await accept(deps, 3, key="k2")
    assert taken.request_id != "live"
    assert await deps.store.requests.find_one({"_id": "live"}) is None
    assert await deps.store.product_pages.count_documents({"_id": id_range("live")}) == 0


async def test_an_attempt_taken_over_while_storing_stops_and_cleans_up(
        deps: Deps, monkeypatch: pytest.MonkeyPatch) -> None:
    real, seen = pages_mod.insert_pages, list[str]()

    async def taken_over(store: Store, docs: list[dict[str, Any]]) -> None:
        await real(store, docs)
        if not seen:
            seen.append(docs[0]["request_id"])
            await store.requests.delete_one({"_id": docs[0]["request_id"]})  # a retry did

    monkeypatch.setattr(pages_mod, "insert_pages", taken_over)
    with pytest.raises(pages_mod.UploadDropped) as err:  # transient: send it again
        await accept(deps, 1500, key="k3")
    assert isinstance(err.value, TransientError) and err.value.retry_after
    assert await deps.store.product_pages.count_documents({"_id": id_range(seen[0])}) == 0


async def test_the_sweep_drops_only_uploads_abandoned_while_receiving(deps: Deps) -> None:
    now = await db_now(deps.store)
    old = now - timedelta(seconds=deps.settings.receiving_stale_seconds + 5)
    for rid, status, at in [("dead", Status.RECEIVING, old), ("busy", Status.RECEIVING, now),
                            ("queued", Status.QUEUED, old)]:
        await deps.store.requests.insert_one(new_request_doc(
            rid, product_count=1, image_count=1, webhook_url=None, created_at=at,
            filename=None, status=status) | {"updated_at": at})
        await deps.store.product_pages.insert_one({"_id": f"{rid}:000000000", "rows": []})
    assert await relay_of(deps).sweep() == 1
    assert {d["_id"] async for d in deps.store.requests.find({})} == {"busy", "queued"}
    assert await deps.store.product_pages.count_documents({"_id": id_range("dead")}) == 0


async def test_one_relay_at_a_time_and_another_takes_over_a_lapsed_lease(deps: Deps) -> None:
    first, second = relay_of(deps), relay_of(deps)
    assert await first.hold_lease() and not await second.hold_lease()
    assert await first.hold_lease()  # renewed by its holder
    await deps.store.leases.update_one({"_id": "relay"}, {"$set": {
        "until": await db_now(deps.store) - timedelta(seconds=1)}})  # the holder died
    assert await second.hold_lease() and not await first.hold_lease()


async def stall(deps: Deps, rid: str, seconds: float) -> None:
    """As if the request had made no progress for ``seconds``."""
    await deps.store.requests.update_one({"_id": rid}, {"$set": {
        "updated_at": await db_now(deps.store) - timedelta(seconds=seconds)}})


async def test_the_reconciler_re_drives_exactly_the_positions_without_a_result(
        deps: Deps) -> None:
    accepted = await accept(deps, 150)  # 300 images over two pages
    rid = accepted.request_id
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=1000))
    recorded(deps).clear()
    lost = {(7, 1), (120, 0), (149, 1)}  # (row, position) with no result
    await deps.store.images.insert_many([
        {"_id": position_id(rid, row + 1, k), "request_id": rid, "status": "succeeded"}
        for row in range(150) for k in range(2) if (row, k) not in lost])
    reconciler = Reconciler(deps.settings, deps.store, deps.publisher)
    assert await reconciler.run_once() == 0  # progress was recent: nothing to do
    await stall(deps, rid, deps.settings.reconcile_after_seconds + 1)
    assert await reconciler.run_once() == 3
    again = [e for e in recorded(deps) if isinstance(e, ImageRequested)]
    assert {(e.row, e.position) for e in again} == lost and len(again) == 3
    assert all(e.row is not None and e.serial == e.row + 1
               and e.url.endswith(f"/{e.position}.jpg") for e in again)
    request = await deps.store.requests.find_one({"_id": rid})
    assert request is not None and (request["redrives"], request["redriven"]) == (1, 3)
    assert await reconciler.run_once() == 0  # a re-drive counts as progress


async def test_the_reconciler_gives_up_on_a_position_after_its_attempts(deps: Deps) -> None:
    rid = (await accept(deps, 2)).request_id
    await relay_all(relay_of(deps))
    recorded(deps).clear()
    reconciler = Reconciler(deps.settings.model_copy(update={"reconcile_max_attempts": 2}),
                            deps.store, deps.publisher)
    for _ in range(2):
        await stall(deps, rid, deps.settings.reconcile_after_seconds + 1)
        assert await reconciler.run_once() == 4
    await stall(deps, rid, deps.settings.reconcile_after_seconds + 1)
    assert await reconciler.run_once() == 4
    failed = [e for e in recorded(deps) if isinstance(e, ImageDone)]
    assert sorted((e.row, e.position) for e in failed) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {(e.status, e.error_code) for e in failed} == {("failed", "not_processed")}


async def test_only_published_positions_of_a_request_still_relaying_are_re_driven(
        deps: Deps) -> None:
    rid = (await accept(deps, 100)).request_id  # 200 images
    await relay_of(deps, relay_window=30, relay_batch=30).round()  # 30 published, 0 done
    recorded(deps).clear()
    await stall(deps, rid, deps.settings.reconcile_after_seconds + 1)
    assert await Reconciler(deps.settings, deps.store, deps.publisher).run_once() == 30


async def test_an_upload_stored_whose_answer_was_lost_is_kept_for_its_retry(
        deps: Deps, monkeypatch: pytest.MonkeyPatch) -> None:
    """mark_stored landed but its reply was lost: the request is durable and
    QUEUED, so nothing of it is removed, and a retry with its key gets it."""
    import services.ingest.handlers as handlers_mod

    real = handlers_mod.mark_stored

    async def landed_then_lost(store: Store, request_id: str, fields: dict[str, Any]) -> bool:
        await real(store, request_id, fields)
        raise OSError("connection reset after the write")

    monkeypatch.setattr(handlers_mod, "mark_stored", landed_then_lost)
    with pytest.raises(OSError):
        await accept(deps, 150, key="k-lost")
    [doc] = [d async for d in deps.store.requests.find({})]
    assert doc["status"] == Status.QUEUED and doc[RELAY_PENDING]
    pages = await deps.store.product_pages.count_documents({"_id": id_range(doc["_id"])})
    assert pages == 2  # 150 rows, 100 a page: all kept
    monkeypatch.setattr(handlers_mod, "mark_stored", real)
    assert (await accept(deps, 150, key="k-lost")).request_id == doc["_id"]


async def test_a_request_whose_pages_are_gone_stops_being_relayed_and_says_why(
        deps: Deps) -> None:
    broken, fine = await accept(deps, 150), await accept(deps, 3)
    await deps.store.product_pages.delete_many({"_id": id_range(broken.request_id)})
    relay = relay_of(deps)
    await relay_all(relay)
    doc = await deps.store.requests.find_one({"_id": broken.request_id})
    assert doc is not None and RELAY_PENDING not in doc
    assert "product_rows_missing" in doc["relay_error"]
    assert await relay.round() == 0  # not retried every round
    ok = await deps.store.requests.find_one({"_id": fine.request_id})
    assert ok is not None and ok["relay"]["published"] == 6  # the other one was relayed
