"""Pass 2 of an upload: store its rows as product pages and publish one
``image.requested`` per URL, in overlapped batches (see ``store_and_publish``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, BinaryIO

from services.ingest.csvparse import CsvLimits, ProductRow, iter_products
from shared.errors import TransientError
from shared.events import ImageRequestedEncoder, now_utc
from shared.kafka import EventPublisher
from shared.mongo import Store
from shared.products import PageBuilder
from shared.topics import Topic

FIRST_BATCH = 200


class Withdrawn(TransientError):
    code = "withdrawn"


async def heartbeat(store: Store, request_id: str) -> None:
    """Show a retry with the same Idempotency-Key that this attempt is alive
    (``heartbeat_at``, on the database's clock); raise ``Withdrawn`` if a retry
    has already given up on it, so it stops publishing at once."""
    beat = await store.requests.update_one(
        {"_id": request_id, "withdrawn": {"$ne": True}},
        [{"$set": {"heartbeat_at": "$$NOW", "updated_at": "$$NOW"}}])
    if not beat.matched_count:
        raise Withdrawn("this upload was withdrawn while it was being accepted")


async def store_and_publish(store: Store, publisher: EventPublisher, limits: CsvLimits,
                            batch: int, pages: PageBuilder, stream: BinaryIO,
                            kept: list[ProductRow] | None) -> None:
    """Pass 2 over the file (or over the rows ``kept`` by validation), in
    batches: bounded memory at any size.

    A worker thread parses the next batch and encodes its page documents and
    events while the previous batch's pages are inserted, concurrently with the
    publish of the batch before it (whose pages are stored); at most two
    batches are in flight. An event goes out only once its row is stored, so a
    fast external processor's callback always finds the row it reports on.
    Before each batch the heartbeat checks the attempt was not withdrawn.

    The first batch is small (``FIRST_BATCH`` rows, ready in a few ms) so the
    writes start at once; each next one is twice the size, up to ``batch`` rows.
    """
    if kept is not None:
        rows: Iterator[ProductRow] = iter(kept)
    else:
        stream.seek(0)
        rows = iter_products(stream, limits)
    encoder = ImageRequestedEncoder(pages.request_id)
    size = min(FIRST_BATCH, batch)
    in_flight: list[asyncio.Task[Any]] = []
    stored: list[tuple[bytes, bytes]] = []  # events whose rows are stored, to publish
    try:
        while True:
            docs, messages = await asyncio.to_thread(_prepare, pages, encoder, rows, size)
            if not docs:
                break
            size = min(size * 2, batch)
            await _settle(in_flight)
            # Checked before anything more goes out: a withdrawn attempt stops
            # here, at most one batch after the withdraw.
            await heartbeat(store, pages.request_id)
            in_flight = [
                asyncio.ensure_future(store.product_pages.insert_many(docs, ordered=False)),
                asyncio.ensure_future(publisher.publish_encoded(Topic.IMAGE_REQUESTED, stored)),
            ]
            stored = messages
        await _settle(in_flight)
        await heartbeat(store, pages.request_id)
        await publisher.publish_encoded(Topic.IMAGE_REQUESTED, stored)
        if directory := pages.serial_docs():
            await store.product_serials.insert_many(directory, ordered=False)
    except Exception:
        # Let writes already sent finish (a server runs them anyway), so the
        # caller's withdraw deletes what they stored rather than racing them.
        await asyncio.gather(*in_flight, return_exceptions=True)
        raise
    except BaseException:  # cancelled: stop what is ours to stop
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        raise


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for every task; then raise the first error, if any."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _prepare(pages: PageBuilder, encoder: ImageRequestedEncoder, rows: Iterator[ProductRow],
             n: int) -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    """About ``n`` rows (whole pages) as page documents and encoded events.

    Events are encoded straight to JSON by ``encoder`` (byte-identical to
    ``ImageRequested(...).encode()``, under half the CPU); one ``occurred_at``
    per batch.
    """
    docs: list[dict[str, Any]] = []
    messages: list[tuple[bytes, bytes]] = []
    occurred_at = now_utc()
    for taken, row in enumerate(rows, start=1):
        page = pages.add(row.serial, row.name, row.line, row.urls)
        messages.extend(encoder.encode_product(row.serial, row.name, row.urls, occurred_at))
        if page is not None:
            docs.append(page)
            if taken >= n:
                return docs, messages
    last = pages.flush()
    if last is not None:
        docs.append(last)
    return docs, messages
