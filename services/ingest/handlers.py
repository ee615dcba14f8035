"""Accepting an upload: validate, store the rows, publish the events.

The request becomes visible (``accepted: true``) only after every event was
acknowledged by Kafka, so an id we return is never a 404 and an id we never
returned is never processed as if accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pymongo.errors import DuplicateKeyError

from services.ingest.csvparse import CsvIssue, ValidationReport, validate
from services.ingest.enqueue import Withdrawn, store_and_publish
from services.ingest.settings import Settings
from shared.errors import ImgpipeError, InvalidInputError
from shared.events import RequestCreated, now_utc
from shared.kafka import EventPublisher
from shared.logs import request_id_var
from shared.mongo import TERMINAL_STATUSES, Store, db_now, new_request_doc
from shared.netguard import check_url, check_url_static
from shared.products import PageBuilder, id_range, rows_per_page

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
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    keep = s.parse_once_max_rows if size <= s.parse_once_max_bytes else 0  # parsed once
    report = await asyncio.to_thread(validate, stream, s.csv_limits(), keep_rows=keep)
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
    doc["heartbeat_at"] = await db_now(deps.store)
    try:
        await deps.store.requests.insert_one(doc)
    except DuplicateKeyError:  # a concurrent upload with the same key won
        earlier = await _earlier(deps, idempotency_key or "", sha)
        if earlier:
            return earlier
        raise IdempotencyConflict(  # and was withdrawn meanwhile: the key is free again
            "an upload with this Idempotency-Key was just withdrawn; retry") from None
    try:
        pages = PageBuilder(request_id, doc["page_rows"])
        await store_and_publish(deps.store, deps.publisher, s.csv_limits(), s.publish_batch,
                                pages, stream, report.rows)
        report.rows = None  # memory
        # Accepted only once every image event is acknowledged (and only if a
        # retry has not withdrawn this attempt meanwhile); request-created goes
        # last, so the aggregator's completion check on it sees the flag.
        flipped = await deps.store.requests.update_one(
            {"_id": request_id, "withdrawn": {"$ne": True}},
            {"$set": {"accepted": True, "serial_offset": pages.serial_offset,
                      "serial_buckets": pages.serial_buckets}})
        if not flipped.matched_count:
            raise Withdrawn("this upload was withdrawn while it was being accepted")
        await deps.publisher.publish(created_event(doc))
    except BaseException as exc:
        log.exception("request %s could not be enqueued; withdrawing it", request_id)
        if not await _withdraw(deps, request_id) and isinstance(exc, Exception):
            # It had already finished (its images completed while the last
            # publish was failing), or a retry with its Idempotency-Key was
            # already answered with its id: the client gets its id after all.
            return Accepted(request_id, report.product_count, report.image_count,
                            report.warnings, report.warning_count)
        raise
    log.info("accepted %s products, %s images from %r", report.product_count,
             report.image_count, filename)
    return Accepted(request_id, report.product_count, report.image_count,
                    report.warnings, report.warning_count)


def created_event(doc: dict[str, Any]) -> RequestCreated:
    return RequestCreated(
        request_id=doc["_id"], product_count=doc["product_count"],
        image_count=doc["image_count"], webhook_url=doc.get("webhook_url"),
        created_at=doc["created_at"], source_filename=doc.get("filename"))


async def _withdraw(deps: Deps, request_id: str, *, unless_accepted: bool = False) -> bool:
    """Withdraw an attempt the client will not get an id for.

    True if it is withdrawn (now or earlier: its product pages are deleted
    again, in case an insert landed after the first delete). False if it
    stands: it had already finished (the aggregator completed it), a retry
    with its Idempotency-Key was answered with its id (``answered``), or, with
    ``unless_accepted``, it was accepted meanwhile.
    """
    query: dict[str, Any] = {"_id": request_id, "status": {"$nin": list(TERMINAL_STATUSES)},
                             "answered": {"$ne": True}}
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
    """The request an earlier upload with this Idempotency-Key made, if it
    stands; None to go on as a new upload."""
    doc = await deps.store.requests.find_one({"idempotency_key": key})
    if doc is None:
        return None
    if doc.get("file_sha256") != sha:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different file; "
            "use a new key for a new upload")
    if not doc.get("accepted"):
        last = doc.get("heartbeat_at") or doc["updated_at"]  # one per batch, database clock
        if (await db_now(deps.store) - last).total_seconds() < STALE_ATTEMPT_SECONDS:
            raise IdempotencyConflict(
                "an upload with this Idempotency-Key is still being accepted; "
                "retry in a few seconds")
        if await _withdraw(deps, doc["_id"], unless_accepted=True):  # it died half-way
            return None
        doc = await deps.store.requests.find_one({"_id": doc["_id"]}) or {}
        if not doc.get("accepted"):
            raise IdempotencyConflict("an upload with this Idempotency-Key is being "
                                      "withdrawn; retry in a few seconds")
    # Published again (idempotent for the aggregator): the first attempt may
    # have died between accepting and publishing it, leaving no completion check.
    await deps.publisher.publish(created_event(doc))
    # Its id is about to be given out, with its request.created acknowledged:
    # from now on the first attempt, should it still be running and fail, must
    # not withdraw it.
    answered = await deps.store.requests.update_one(
        {"_id": doc["_id"], "accepted": True, "withdrawn": {"$ne": True}},
        {"$set": {"answered": True}})
    if not answered.matched_count:
        return None  # withdrawn meanwhile (its key is free again): a new upload
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
