"""The aggregator's fan-out of one image.done to every position of a repeated
URL (``also``), on the real MongoDB API: each position recorded and counted
exactly once under duplicate delivery, a crash between the insert and the
increment, callbacks and re-drives."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import services.aggregator.handlers as handlers
from services.aggregator.handlers import image_docs, record_image_done, record_request_created
from shared.events import ImageDone, PositionRef, RequestCompleted, RequestCreated, now_utc
from shared.mongo import Store, position_id
from shared.products import PageBuilder, iter_products

pytestmark = pytest.mark.stack
URL = "http://in/same.jpg"
ROWS = 6  # one URL per row, all the same: row 0 leads, rows 1-5 are covered


class Published(list[RequestCompleted]):
    async def __call__(self, ev: RequestCompleted) -> None:
        self.append(ev)


async def new_request(store: Store, rows: int = ROWS) -> str:
    rid = str(uuid.uuid4())
    await record_request_created(store, RequestCreated(
        request_id=rid, product_count=rows, image_count=rows, created_at=now_utc()))
    pages = PageBuilder(rid, page_rows=100)
    for row in range(rows):
        pages.add(row + 1, f"P{row}", row + 2, [URL])
    await store.product_pages.insert_one(pages.flush())
    await store.requests.update_one({"_id": rid}, {"$set": {"page_rows": 100}})
    return rid


def ref(row: int) -> PositionRef:
    return PositionRef(row=row, serial=row + 1, position=0)


def done(rid: str, row: int = 0, also: range | list[int] = range(1, ROWS), ok: bool = True,
         **extra: Any) -> ImageDone:
    return ImageDone(request_id=rid, image_id="img", serial=row + 1, row=row, position=0,
                     url=URL, status="succeeded" if ok else "failed",
                     output_url="http://out/same.jpg" if ok else None,
                     error_code=None if ok else "http_404", also=[ref(r) for r in also],
                     **extra)


async def request_of(store: Store, rid: str) -> dict[str, Any]:
    req = await store.requests.find_one({"_id": rid})
    assert req is not None
    return req


async def test_one_event_records_and_counts_every_position_of_its_url(store: Store) -> None:
    rid, published = await new_request(store), Published()
    await record_image_done(store, done(rid), published)
    req = await request_of(store, rid)
    assert (req["succeeded"], req["failed"], req["covered"]) == (ROWS, 0, ROWS - 1)
    assert req["status"] == "COMPLETED" and len(published) == 1
    images = [d async for d in store.images.find({"request_id": rid}).sort("row", 1)]
    assert [(d["row"], d["serial"], d["position"]) for d in images] == [
        (r, r + 1, 0) for r in range(ROWS)]
    assert all(d["counted"] for d in images)
    assert [d["via"] for d in images] == [None] + [position_id(rid, 1, 0)] * (ROWS - 1)
    products = [p async for p in iter_products(store, req)]
    assert [p.output_urls for p in products] == [["http://out/same.jpg"]] * ROWS


async def test_duplicate_deliveries_count_each_position_once_without_recounting(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    recounts: list[str] = []
    real = handlers.recount

    async def counting(st: Store, r: str) -> dict[str, Any] | None:
        recounts.append(r)
        return await real(st, r)

    rid, published = await new_request(store), Published()
    monkeypatch.setattr(handlers, "recount", counting)
    first = done(rid, also=[1, 2])  # a part of the group first (e.g. a re-drive's group)
    for _ in range(3):
        await record_image_done(store, first, published)
    req = await request_of(store, rid)
    assert (req["succeeded"], req["covered"], req["status"]) == (3, 2, "PROCESSING")
    for _ in range(3):  # the whole group, overlapping what is recorded
        await record_image_done(store, done(rid), published)
    req = await request_of(store, rid)
    assert (req["succeeded"], req["failed"], req["covered"]) == (ROWS, 0, ROWS - 1)
    assert len(published) == 1 and published[0].succeeded == ROWS
    assert recounts == []


@pytest.mark.parametrize("inserted", ["all", "some"])
async def test_a_crash_between_insert_and_increment_is_recounted_exactly(
        store: Store, monkeypatch: pytest.MonkeyPatch, inserted: str) -> None:
    rid, published = await new_request(store), Published()
    ev = done(rid, ok=False)
    if inserted == "some":  # the crash hit during the insert itself: only some landed
        await store.images.insert_many(image_docs(ev, now_utc())[::2])
    else:  # the insert landed, the increment never ran (the process died in between)
        def crash(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("the aggregator died here")

        monkeypatch.setattr(handlers, "count_image", crash)
        with pytest.raises(ConnectionError):
            await record_image_done(store, ev, published)
        monkeypatch.undo()
    assert (await request_of(store, rid))["failed"] == 0
    await record_image_done(store, ev, published)  # the redelivery
    await record_image_done(store, ev, published)  # and another: nothing changes
    req = await request_of(store, rid)
    assert (req["succeeded"], req["failed"], req["covered"]) == (0, ROWS, ROWS - 1)
    assert req["status"] == "FAILED" and len(published) == 1
    assert await store.images.count_documents({"request_id": rid, "counted": False}) == 0


async def test_a_callback_for_a_covered_position_counts_it_once(store: Store) -> None:
    """An external service's result for one covered position applies to that
    position only; the leader's event then records the others."""
    rid, published = await new_request(store), Published()
    callback = ImageDone(request_id=rid, image_id="img", serial=4, row=3, position=0,
                         url=URL, status="succeeded", output_url="http://ext/3.jpg",
                         source="callback")
    await record_image_done(store, callback, published)
    await record_image_done(store, done(rid), published)
    req = await request_of(store, rid)
    assert (req["succeeded"], req["failed"]) == (ROWS, 0) and len(published) == 1
    products = [p async for p in iter_products(store, req)]
    assert [p.output_urls[0] for p in products] == [
        "http://ext/3.jpg" if r == 3 else "http://out/same.jpg" for r in range(ROWS)]


async def test_a_crash_after_the_own_position_was_recorded_earlier_is_recounted(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader's own position came first by itself (a callback), so the
    event's other positions carry their own counted flags: a crash before
    their increment is found on the redelivery and recounted."""
    rid, published = await new_request(store), Published()
    await record_image_done(store, done(rid, also=[]), published)  # the leader's position

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the aggregator died here")

    monkeypatch.setattr(handlers, "count_image", crash)
    with pytest.raises(ConnectionError):
        await record_image_done(store, done(rid), published)
    monkeypatch.undo()
    assert await store.images.count_documents({"request_id": rid, "counted": False}) == ROWS - 1
    await record_image_done(store, done(rid), published)
    req = await request_of(store, rid)
    assert (req["succeeded"], req["covered"], req["status"]) == (ROWS, ROWS - 1, "COMPLETED")
    assert len(published) == 1
    assert await store.images.count_documents({"request_id": rid, "counted": False}) == 0
