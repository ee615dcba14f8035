"""Product pages read back from the real MongoDB API: order, outputs, lookups."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.errors import PermanentError
from shared.events import now_utc
from shared.mongo import Store, position_id
from shared.products import PageBuilder, check_complete, iter_products, page_id, product_at
from shared.requests import Status, new_request_doc

pytestmark = pytest.mark.stack


async def stored_request(store: Store, serials: list[int], page_rows: int) -> dict[str, Any]:
    """A request whose product ``i`` has serial ``serials[i]`` and i % 3 + 1 URLs."""
    rid = str(uuid.uuid4())
    pages, docs = PageBuilder(rid, page_rows), []
    for i, serial in enumerate(serials):
        urls = [f"http://in/{serial}/{k}.jpg" for k in range(i % 3 + 1)]
        if (doc := pages.add(serial, f"Product {serial}", i + 2, urls)) is not None:
            docs.append(doc)
    if (last := pages.flush()) is not None:
        docs.append(last)
    await store.product_pages.insert_many(docs)
    request = new_request_doc(rid, product_count=len(serials), image_count=0, webhook_url=None,
                              created_at=now_utc(), filename=None, status=Status.QUEUED,
                              page_rows=page_rows)
    await store.requests.insert_one(request)
    return request


async def record(store: Store, rid: str, serial: int, position: int, ok: bool) -> None:
    await store.images.insert_one({
        "_id": position_id(rid, serial, position), "request_id": rid, "serial": serial,
        "position": position, "status": "succeeded" if ok else "failed",
        "output_url": f"http://out/{serial}/{position}.jpg" if ok else None})


async def test_products_come_back_in_input_order_with_their_recorded_outputs(
        store: Store) -> None:
    serials = [7, 3, 11, 1, 5, 2, 9]  # not sorted: order is the file's
    request = await stored_request(store, serials, page_rows=3)
    rid = request["_id"]
    await record(store, rid, 3, 0, ok=True)
    await record(store, rid, 3, 1, ok=False)
    await record(store, rid, 9, 0, ok=True)
    products = [p async for p in iter_products(store, request)]
    assert [p.serial for p in products] == serials
    assert [p.row for p in products] == list(range(len(serials)))
    assert products[1].input_urls == ["http://in/3/0.jpg", "http://in/3/1.jpg"]
    assert products[1].output_urls == ["http://out/3/0.jpg", None]
    assert products[6].output_urls == ["http://out/9/0.jpg"]
    assert products[0].output_urls == [None]


@pytest.mark.parametrize(("start", "limit"), [(0, 2), (2, 3), (3, 3), (5, 10), (7, 5), (1, 1)])
async def test_a_window_of_products_crosses_page_boundaries(
        store: Store, start: int, limit: int) -> None:
    serials = list(range(100, 107))
    request = await stored_request(store, serials, page_rows=3)
    window = [p.serial async for p in iter_products(store, request, start=start, limit=limit)]
    assert window == serials[start:start + limit]


async def test_a_product_is_found_by_its_row_with_one_read(store: Store) -> None:
    serials = [5, 1, 9, 3, 7, 2, 11, 40]
    request = await stored_request(store, serials, page_rows=3)
    for row, serial in enumerate(serials):
        found = await product_at(store, request, row)
        assert found is not None and found["serial"] == serial
        assert found["input_urls"][0] == f"http://in/{serial}/0.jpg"
        assert found["line"] == row + 2
    for row in (-1, len(serials), 2**31):
        assert await product_at(store, request, row) is None


async def test_a_missing_page_is_an_error_not_a_shorter_list(store: Store) -> None:
    request = await stored_request(store, list(range(1, 8)), page_rows=3)
    await store.product_pages.delete_one({"_id": page_id(request["_id"], 3)})
    seen: list[int] = []
    with pytest.raises(PermanentError) as err:
        async for product in iter_products(store, request):
            seen.append(product.serial)
    assert err.value.code == "product_rows_missing"
    assert seen == [1, 2, 3]


async def test_a_request_without_its_rows_is_an_error_but_an_empty_window_is_not(
        store: Store) -> None:
    request = await stored_request(store, list(range(1, 8)), page_rows=3)
    await check_complete(store, request)
    assert [p async for p in iter_products(store, request, start=7)] == []
    assert [p async for p in iter_products(store, request, limit=0)] == []
    recreated = {**request, "page_rows": None}  # re-created from events: no pages known
    for call in (check_complete(store, recreated), anext(iter_products(store, recreated))):
        with pytest.raises(PermanentError) as err:
            await call
        assert err.value.code == "product_rows_missing"
    await store.product_pages.delete_one({"_id": page_id(request["_id"], 6)})
    with pytest.raises(PermanentError):
        await check_complete(store, request)
