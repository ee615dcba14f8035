"""Accepting an upload: validate, store the request and its rows, answer.

The outbox: an upload is answered ``202`` once its request and every product
page are durable in MongoDB (``RECEIVING`` → ``QUEUED``, see
``shared/requests.py``); nothing is published here. The relay
(``services/ingest/relay.py``) publishes the request's events from what was
stored. An upload that fails before that is deleted again and its client gets
an error (its id was never given out, and no event names it).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import uuid
from dataclasses import dataclass, field
from typing import BinaryIO

from pymongo.errors import DuplicateKeyError

from services.ingest.csvparse import CsvIssue, ValidationReport, validate
from services.ingest.pages import UploadDropped, store_pages
from services.ingest.repeats import Grouper
from services.ingest.settings import Settings
from shared.errors import ImgpipeError, InvalidInputError, TransientError
from shared.events import now_utc
from shared.kafka import EventPublisher
from shared.logs import request_id_var
from shared.mongo import Store, db_now
from shared.netguard import check_url, check_url_static
from shared.products import PageBuilder, id_range, rows_per_page
from shared.requests import Status, drop_receiving, mark_stored, new_request_doc
from shared.retry import retry_stale_connection

log = logging.getLogger(__name__)


class CsvRejected(InvalidInputError):
    code = "csv_invalid"

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"{report.error_count} error(s) in the CSV")
        self.report = report


class WebhookRejected(InvalidInputError):
    code = "webhook_url_invalid"


class IdempotencyConflict(InvalidInputError):
    """The key was used with another file: a client error, not worth retrying."""

    code = "idempotency_key_reused"


class IdempotencyInProgress(TransientError):
    """An upload with this key is still being received: retry shortly."""

    code = "idempotency_in_progress"


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
    publisher: EventPublisher  # signed callbacks publish their results
    wake_relay: asyncio.Event = field(default_factory=asyncio.Event)


def file_digest(stream: BinaryIO) -> str:
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


async def accept_upload(deps: Deps, stream: BinaryIO, *, tenant: str, filename: str | None,
                        webhook_url: str | None, idempotency_key: str | None) -> Accepted:
    s = deps.settings
    sha = await asyncio.to_thread(file_digest, stream)
    if idempotency_key and (earlier := await _earlier(deps, tenant, idempotency_key, sha)):
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
    doc = new_request_doc(
        request_id, product_count=report.product_count, image_count=report.image_count,
        webhook_url=webhook_url or None, created_at=now_utc(), filename=filename,
        file_sha256=sha, warnings=[w.as_dict() for w in report.warnings],
        warning_count=report.warning_count, page_rows=rows_per_page(report.max_row_bytes),
        tenant=tenant)
    if idempotency_key:
        doc["idempotency_key"] = idempotency_key
    try:
        await retry_stale_connection(lambda: deps.store.requests.insert_one(doc))
    except DuplicateKeyError as exc:
        if "_id" in (exc.details or {}).get("keyPattern", {}):
            pass  # our own insert, retried after its connection broke, had landed
        elif earlier := await _earlier(deps, tenant, idempotency_key or "", sha):
            return earlier
        else:  # a concurrent upload with the same key got there first
            raise IdempotencyInProgress("an upload with this Idempotency-Key is being "
                                        "received; retry in a few seconds",
                                        retry_after=2) from None
    try:
        pages = PageBuilder(request_id, doc["page_rows"])
        groups = Grouper(request_id, report.repeated)
        await store_pages(deps.store, s.csv_limits(), s.publish_batch, pages, stream,
                          report.rows, groups)
        report.rows = report.repeated = None  # memory
        if groups.covered:
            log.info("%s image positions repeat a URL: %s events stand for them",
                     groups.covered, groups.groups)
        if not await mark_stored(deps.store, request_id, {}):
            raise UploadDropped()  # taken over after its last page
    except BaseException:
        log.warning("upload %s was not stored; removing what was", request_id)
        await asyncio.shield(discard(deps.store, request_id))
        raise
    deps.wake_relay.set()
    log.info("accepted %s products, %s images from %r", report.product_count,
             report.image_count, filename)
    return Accepted(request_id, report.product_count, report.image_count,
                    report.warnings, report.warning_count)


async def discard(store: Store, request_id: str) -> None:
    """Remove an upload that never reached QUEUED (best effort: the relay's
    sweep removes what a failure here leaves behind)."""
    try:
        dropped = await drop_receiving(store, request_id)
        # Not if it is QUEUED after all (its mark_stored landed, the answer was
        # lost): it is durable and relayed, and a retry with its key gets it.
        if dropped or await store.requests.find_one({"_id": request_id}, {"_id": 1}) is None:
            await store.product_pages.delete_many({"_id": id_range(request_id)})
            await store.url_groups.delete_many({"_id": id_range(request_id)})
    except Exception as exc:
        log.warning("could not remove upload %s yet (the sweep will): %r", request_id, exc)


async def _earlier(deps: Deps, tenant: str, key: str, sha: str) -> Accepted | None:
    """The request an earlier upload of this tenant with this Idempotency-Key
    made; None to go on as a new upload (none, or an abandoned one, now removed).
    Another tenant's key of the same value is not seen: it is theirs."""
    doc = await retry_stale_connection(
        lambda: deps.store.requests.find_one({"tenant": tenant, "idempotency_key": key}))
    if doc is None:
        return None
    if doc.get("file_sha256") != sha:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different file; "
            "use a new key for a new upload")
    if doc["status"] == Status.RECEIVING:
        idle = (await db_now(deps.store) - doc["updated_at"]).total_seconds()
        if idle < deps.settings.receiving_stale_seconds:
            raise IdempotencyInProgress(
                "an upload with this Idempotency-Key is still being received; "
                "retry in a few seconds", retry_after=2)
        await discard(deps.store, doc["_id"])  # it died half-way: start again
        return None
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
    except TransientError:
        raise  # DNS is away for now: 503 and Retry-After, not "the URL is bad"
    except ImgpipeError as exc:
        raise WebhookRejected(f"webhook_url is not allowed: {exc.message}", code=exc.code) \
            from exc
