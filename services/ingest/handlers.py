"""Accepting an upload: validate, store the rows, publish the events.

The request becomes visible (``accepted: true``) only after every event was
acknowledged by Kafka, so an id we return is never a 404 and an id we never
returned is never processed as if accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pymongo.errors import DuplicateKeyError

from services.ingest.csvparse import CsvIssue, ProductRow, ValidationReport, iter_products, validate
from services.ingest.settings import Settings
from shared.errors import ImgpipeError, InvalidInputError, TransientError
from shared.events import ImageRequestedEncoder, RequestCreated, now_utc
from shared.kafka import EventPublisher
from shared.logs import request_id_var
from shared.mongo import TERMINAL_STATUSES, Store, new_request_doc
from shared.netguard import check_url, check_url_static
from shared.products import PageBuilder, id_range, rows_per_page
from shared.topics import Topic

log = logging.getLogger(__name__)
STALE_ATTEMPT_SECONDS = 600


class CsvRejected(InvalidInputError):
    code = "csv_invalid"

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"{report.error_count} error(s) in the CSV")
        self.report = report


class WebhookRejected(InvalidInputError):
    code = "webhook_url_invalid"


class IdempotencyConflict(InvalidInputError):
    code = "idempotency_conflict"


@dataclass
class Accepted:
    request_id: str
    product_count: int
    image_count: int
    warnings: list[CsvIssue] = field(default_factory=list)
    warning_count: int = 0


@dataclass
class Deps:
    settings: Settings
    store: Store
    publisher: EventPublisher


def file_digest(stream: BinaryIO) -> str:
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


async def accept_upload(deps: Deps, stream: BinaryIO, *, filename: str | None,
                        webhook_url: str | None, idempotency_key: str | None) -> Accepted:
    s = deps.settings
    sha = await asyncio.to_thread(file_digest, stream)
    if idempotency_key:
        earlier = await _earlier(deps, idempotency_key, sha)
        if earlier:
            return earlier
    report = await asyncio.to_thread(validate, stream, s.csv_limits(),
                                     keep_rows=s.rows_kept_after_validation)
    if not report.ok:
        raise CsvRejected(report)
    if webhook_url:
        await _check_webhook(deps, webhook_url)

    request_id = str(uuid.uuid4())
    request_id_var.set(request_id)
    now = now_utc()
    doc = new_request_doc(
        request_id, product_count=report.product_count, image_count=report.image_count,
        webhook_url=webhook_url or None, created_at=now, filename=filename, accepted=False,
        file_sha256=sha, warnings=[w.as_dict() for w in report.warnings],
        warning_count=report.warning_count,
        page_rows=rows_per_page(report.max_row_bytes))
    if idempotency_key:
        doc["idempotency_key"] = idempotency_key
    try:
        await deps.store.requests.insert_one(doc)
    except DuplicateKeyError:  # a concurrent upload with the same key won
        earlier = await _earlier(deps, idempotency_key or "", sha)
        if earlier:
            return earlier
        raise
    try:
        pages = PageBuilder(request_id, doc["page_rows"])
        await _store_and_publish(deps, pages, stream, report.rows)
        report.rows = None  # memory
        # Accepted only once every image event is acknowledged (and only if a
        # retry has not withdrawn this attempt meanwhile); request-created goes
        # last, so the aggregator's completion check on it sees the flag.
        flipped = await deps.store.requests.update_one(
            {"_id": request_id, "withdrawn": {"$ne": True}},
            {"$set": {"accepted": True, "serial_offset": pages.serial_offset,
                      "serial_buckets": pages.serial_buckets}})
        if not flipped.matched_count:
            raise TransientError("this upload was withdrawn while it was being accepted",
                                 code="withdrawn")
        await deps.publisher.publish(created_event(doc))
    except BaseException as exc:
        log.exception("request %s could not be enqueued; withdrawing it", request_id)
        if not await _withdraw(deps, request_id) and isinstance(exc, Exception):
            # It had already finished (its images completed while the last
            # publish was failing): the client gets its id after all.
            return Accepted(request_id, report.product_count, report.image_count,
                            report.warnings, report.warning_count)
        raise
    log.info("accepted %s products, %s images from %r", report.product_count,
             report.image_count, filename)
    return Accepted(request_id, report.product_count, report.image_count,
                    report.warnings, report.warning_count)


FIRST_BATCH = 200


async def _store_and_publish(deps: Deps, pages: PageBuilder, stream: BinaryIO,
                             kept: list[ProductRow] | None) -> None:
    """Pass 2 over the file (or over the rows ``kept`` by validation), in
    batches: bounded memory at any size.

    A worker thread parses the next batch and encodes its page documents and
    events while the previous batch's pages are inserted, concurrently with the
    publish of the batch before it (whose pages are stored); at most two
    batches are in flight.

    The first batch is small (``FIRST_BATCH`` rows, ready in a few ms) so the
    writes start at once; each next one is twice the size, up to
    ``publish_batch`` rows.
    """
    if kept is not None:
        rows: Iterator[ProductRow] = iter(kept)
    else:
        stream.seek(0)
        rows = iter_products(stream, deps.settings.csv_limits())
    encoder = ImageRequestedEncoder(pages.request_id)
    limit = deps.settings.publish_batch
    size = min(FIRST_BATCH, limit)
    in_flight: asyncio.Future[Any] | None = None
    stored: list[tuple[bytes, bytes]] = []  # events whose rows are stored, to publish
    try:
        while True:
            docs, messages = await asyncio.to_thread(_prepare, pages, encoder, rows, size)
            if not docs:
                break
            size = min(size * 2, limit)
            if in_flight is not None:
                await in_flight
            # An event goes out only once its row is stored, so a fast external
            # processor's callback always finds the row it reports on.
            in_flight = asyncio.gather(
                deps.store.product_pages.insert_many(docs, ordered=False),
                deps.publisher.publish_encoded(Topic.IMAGE_REQUESTED, stored),
                # heartbeat: a retry with the same key sees this attempt is alive
                deps.store.requests.update_one({"_id": pages.request_id},
                                               {"$set": {"updated_at": now_utc()}}))
            stored = messages
        if in_flight is not None:
            await in_flight
        await deps.publisher.publish_encoded(Topic.IMAGE_REQUESTED, stored)
        if directory := pages.serial_docs():
            await deps.store.product_serials.insert_many(directory, ordered=False)
    except BaseException:
        if in_flight is not None:
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)
        raise


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


def created_event(doc: dict[str, Any]) -> RequestCreated:
    return RequestCreated(
        request_id=doc["_id"], product_count=doc["product_count"],
        image_count=doc["image_count"], webhook_url=doc.get("webhook_url"),
        created_at=doc["created_at"], source_filename=doc.get("filename"))


async def _withdraw(deps: Deps, request_id: str, *, unless_accepted: bool = False) -> bool:
    """Withdraw an attempt the client will not get an id for.

    True if it is withdrawn (now or earlier: its product pages are deleted
    again, in case an insert landed after the first delete). False if it had
    already finished (then it stands: the aggregator completed it), or, with
    ``unless_accepted``, if it was accepted meanwhile.
    """
    query: dict[str, Any] = {"_id": request_id, "status": {"$nin": list(TERMINAL_STATUSES)}}
    if unless_accepted:
        query["accepted"] = {"$ne": True}
    result = await deps.store.requests.update_one(query, {
        "$set": {"status": "FAILED", "withdrawn": True, "accepted": False,
                 "error": "could not enqueue the request"},
        "$unset": {"idempotency_key": ""}})
    if not result.matched_count:
        doc = await deps.store.requests.find_one({"_id": request_id}, {"withdrawn": 1})
        if not (doc or {}).get("withdrawn"):
            return False
    await deps.store.product_pages.delete_many({"_id": id_range(request_id)})
    await deps.store.product_serials.delete_many({"_id": id_range(request_id)})
    return True


async def _earlier(deps: Deps, key: str, sha: str) -> Accepted | None:
    doc = await deps.store.requests.find_one({"idempotency_key": key})
    if doc is None:
        return None
    if doc.get("file_sha256") != sha:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different file; "
            "use a new key for a new upload")
    if not doc.get("accepted"):
        age = (now_utc() - doc["updated_at"]).total_seconds()  # a heartbeat per batch
        if age < STALE_ATTEMPT_SECONDS:
            raise IdempotencyConflict(
                "an upload with this Idempotency-Key is still being accepted; "
                "retry in a few seconds")
        if await _withdraw(deps, doc["_id"], unless_accepted=True):  # it died half-way
            return None
        return await _earlier(deps, key, sha)  # it was accepted meanwhile after all
    # Published again (idempotent for the aggregator): the first attempt may
    # have died between accepting and publishing it, leaving no completion check.
    await deps.publisher.publish(created_event(doc))
    return Accepted(doc["_id"], doc["product_count"], doc["image_count"],
                    [CsvIssue(**w) for w in doc.get("warnings") or []],
                    doc.get("warning_count", 0))


async def _check_webhook(deps: Deps, url: str) -> None:
    policy = deps.settings.net_policy()
    try:
        if deps.settings.check_webhook_dns:
            await check_url(url, policy)
        else:
            check_url_static(url, policy)
    except ImgpipeError as exc:
        raise WebhookRejected(f"webhook_url is not allowed: {exc.message}", code=exc.code) \
            from exc
