"""Pass 2 of an upload: store its rows as product pages, in overlapped batches.

Nothing is published here: the relay (``services/ingest/relay.py``) publishes
a request's events from its stored pages once the upload is ``QUEUED``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, BinaryIO

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from services.ingest.csvparse import CsvLimits, ProductRow, iter_products
from services.ingest.repeats import Grouper
from shared.errors import TransientError
from shared.mongo import Store
from shared.products import PageBuilder
from shared.requests import touch_receiving

FIRST_BATCH = 200
DUPLICATE_KEY = 11000


class UploadDropped(TransientError):
    """A retry with the same Idempotency-Key took over this (abandoned-looking)
    upload: this attempt stops, and its client is told to send it again with
    the same key, which answers the request id of the upload that took over
    (503 with ``Retry-After``)."""

    code = "upload_dropped"

    def __init__(self, message: str = "a later upload with this Idempotency-Key took this "
                                      "one over; send it again with the same key for its "
                                      "request id", *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


async def store_pages(store: Store, limits: CsvLimits, batch: int, pages: PageBuilder,
                      stream: BinaryIO, kept: list[ProductRow] | None,
                      groups: Grouper | None = None) -> None:
    """Pass 2 over the file (or over the rows ``kept`` by validation), in
    batches: bounded memory at any size. With ``groups``, rows are marked
    where they repeat a URL and the ``url_groups`` documents are stored with
    the pages (``services/ingest/repeats.py``).

    A worker thread parses the next batch and builds its page documents while
    the previous batch is inserted; at most one insert is in flight. Before
    each insert the upload shows it is alive (``touch_receiving``) and stops
    with ``UploadDropped`` if it was taken over. The first batch is small
    (``FIRST_BATCH`` rows) so writes start at once; each next one doubles, up to
    ``batch`` rows.
    """
    if kept is not None:
        rows: Iterator[ProductRow] = iter(kept)
    else:
        stream.seek(0)
        rows = iter_products(stream, limits)
    groups = groups or Grouper(pages.request_id, None)
    size = min(FIRST_BATCH, batch)
    in_flight: asyncio.Future[Any] | None = None
    try:
        while True:
            docs, done = await asyncio.to_thread(_prepare, pages, groups, rows, size)
            if in_flight is not None:
                await in_flight
                in_flight = None
            if not docs and not done:
                break
            size = min(size * 2, batch)
            if not await touch_receiving(store, pages.request_id):
                raise UploadDropped()
            in_flight = asyncio.ensure_future(_insert(store, docs, done))
    except BaseException:
        # Let a write already sent finish (a server runs it anyway), so the
        # caller's clean-up deletes what it stored rather than racing it.
        if in_flight is not None:
            await asyncio.gather(in_flight, return_exceptions=True)
        raise


async def _insert(store: Store, pages: list[dict[str, Any]],
                  groups: list[dict[str, Any]]) -> None:
    if pages:
        await insert_pages(store, pages)
    if groups:
        await insert_groups(store, groups)


async def insert_pages(store: Store, docs: list[dict[str, Any]]) -> None:
    """Insert pages; a page already there (a retried insert) counts as stored."""
    await _insert_new(store.product_pages, docs)


async def insert_groups(store: Store, docs: list[dict[str, Any]]) -> None:
    """Insert ``url_groups`` documents, as pages are."""
    await _insert_new(store.url_groups, docs)


async def _insert_new(collection: AsyncCollection, docs: list[dict[str, Any]]) -> None:
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise


def _prepare(pages: PageBuilder, groups: Grouper, rows: Iterator[ProductRow],
             n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """About ``n`` rows (whole pages) as page documents, and the group
    documents completed meanwhile (every one still open after the last row)."""
    docs: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    for taken, row in enumerate(rows, start=1):
        marks, full = groups.annotate(pages.rows, row.serial, row.name, row.urls)
        done += full
        page = pages.add(row.serial, row.name, row.line, row.urls, marks)
        if page is not None:
            docs.append(page)
            if taken >= n:
                return docs, done
    last = pages.flush()
    if last is not None:
        docs.append(last)
    return docs, done + groups.finish()
