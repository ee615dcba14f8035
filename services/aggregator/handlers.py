"""Per-request bookkeeping in MongoDB, safe under at-least-once delivery.

Each URL position has one ``images`` document whose ``_id`` is the position
(request, serial, index): inserting it is the guard that makes counting
idempotent. Only the consumer whose insert succeeded increments the request's
counters, then marks the image ``counted``. A duplicate of a counted image
changes nothing (cheap: no recount, so replaying a big request stays linear).
If a crash hit between the insert and the increment, the re-delivered event
finds an uncounted duplicate and the counters are recounted from the
``images`` documents (``$max``, so a concurrent increment is never undone).

The request moves to a terminal state with one conditional update that only
one caller can win; the winner holds a publication lease and
publishes request-completed. A re-delivery finds ``completion_published``
false and either takes over an expired lease (the holder crashed) or raises
TransientError so the caller retries until the publication is done.
Nothing here depends on Faust table state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared.errors import ImgpipeError, TransientError
from shared.events import AnyEvent, ImageDone, RequestCompleted, RequestCreated, now_utc
from shared.logs import request_id_var
from shared.mongo import (
    TERMINAL_STATUSES,
    Store,
    db_now,
    new_request_doc,
    position_id,
)

log = logging.getLogger(__name__)
Publish = Callable[[RequestCompleted], Awaitable[None]]
PUBLISH_LEASE_SECONDS = 15.0  # one publish; a crashed holder stalls its agent this long


async def record_request_created(store: Store, ev: RequestCreated,
                                 publish: Publish | None = None) -> None:
    """Ingest writes the request itself, then publishes this event last, after
    setting ``accepted``: so here the request is checked for completion (its
    images may all be done already). On a replay into an empty database the
    request is re-created (``$setOnInsert`` only: live state is never
    overwritten) and recounted, since its images may have been recorded first."""
    fresh = new_request_doc(
        ev.request_id, product_count=ev.product_count, image_count=ev.image_count,
        webhook_url=ev.webhook_url, created_at=ev.created_at, filename=ev.source_filename,
        accepted=True)
    del fresh["_id"]
    result = await store.requests.update_one({"_id": ev.request_id},
                                             {"$setOnInsert": fresh}, upsert=True)
    if result.upserted_id is not None:
        # Re-created: images recorded before it existed were never counted.
        # (Only here: a recount racing a live increment would count twice.)
        request = await recount(store, ev.request_id)
        # Every image recorded so far is in that recount: mark them counted, so
        # later duplicates do not recount again (a request's events are handled
        # one at a time, so nothing is recorded in between).
        await store.images.update_many({"request_id": ev.request_id, "counted": False},
                                       {"$set": {"counted": True}})
    else:
        request = await store.requests.find_one({"_id": ev.request_id})
    if request is not None and publish is not None:
        await maybe_complete(store, request, publish)


async def record_image_done(store: Store, ev: ImageDone, publish: Publish) -> None:
    request_id_var.set(ev.request_id)
    now = now_utc()
    doc = image_doc(ev, now)
    try:
        await store.images.insert_one(doc)
        first = True
    except DuplicateKeyError:
        first = False
        # The first result recorded for a position wins (it is what
        # shared/products.py reads as the output); is it counted yet?
        doc = await store.images.find_one({"_id": doc["_id"]}) or doc
    if first:
        field = "succeeded" if ev.status == "succeeded" else "failed"
        request = await store.requests.find_one_and_update(
            {"_id": ev.request_id},
            [{"$set": {
                field: {"$add": [f"${field}", 1]},
                "status": {"$cond": [{"$eq": ["$status", "QUEUED"]}, "PROCESSING", "$status"]},
                "started_at": {"$ifNull": ["$started_at", now]},
                "updated_at": now,
            }}],
            return_document=ReturnDocument.AFTER)
        if request is not None:
            await store.images.update_one({"_id": doc["_id"]}, {"$set": {"counted": True}})
    elif doc.get("counted"):  # a plain duplicate: its increment is known to be done
        request = await store.requests.find_one({"_id": ev.request_id})
    else:  # the first delivery died between its insert and its increment
        log.info("duplicate image-done for %s before it was counted; recounting", doc["_id"])
        request = await recount(store, ev.request_id)
        if request is not None:
            await store.images.update_one({"_id": doc["_id"]}, {"$set": {"counted": True}})
    if request is None:
        log.warning("image-done for unknown request %s ignored", ev.request_id)
        return
    await maybe_complete(store, request, publish)


def image_doc(ev: ImageDone, now: Any) -> dict[str, Any]:
    return {
        "_id": position_id(ev.request_id, ev.serial, ev.position),
        "request_id": ev.request_id, "image_id": ev.image_id, "serial": ev.serial,
        "position": ev.position, "input_url": ev.url, "status": ev.status,
        "output_url": ev.output_url, "error_code": ev.error_code,
        "error_message": ev.error_message, "bytes_in": ev.bytes_in, "bytes_out": ev.bytes_out,
        "quality_in": ev.quality_in, "quality_out": ev.quality_out,
        "quality_method": ev.quality_method, "source_format": ev.source_format,
        "output_format": ev.output_format, "kept_original": ev.kept_original,
        "source": ev.source, "processed_at": ev.occurred_at, "recorded_at": now,
        "counted": False,  # set once the request's counters include this position
    }


async def recount(store: Store, request_id: str) -> dict[str, Any] | None:
    counts = {"succeeded": 0, "failed": 0}
    cursor = await store.images.aggregate([
        {"$match": {"request_id": request_id}},
        {"$group": {"_id": "$status", "n": {"$sum": 1}}},
    ])
    async for row in cursor:
        if row["_id"] in counts:
            counts[row["_id"]] = row["n"]
    return await store.requests.find_one_and_update(
        {"_id": request_id}, {"$max": counts}, return_document=ReturnDocument.AFTER)


def terminal_status(succeeded: int, failed: int) -> str:
    if failed == 0:
        return "COMPLETED"
    return "FAILED" if succeeded == 0 else "COMPLETED_WITH_ERRORS"


async def maybe_complete(store: Store, request: dict[str, Any], publish: Publish, *,
                         lease_seconds: float = PUBLISH_LEASE_SECONDS) -> None:
    succeeded, failed = request["succeeded"], request["failed"]
    if succeeded + failed < request["image_count"] or request.get("completion_published"):
        return
    if request.get("withdrawn") or not request.get("accepted"):
        # Not (yet) accepted: ingest publishes request-created after setting the
        # flag, and that event runs this check again. Withdrawn: ingest told the
        # client it failed, so it must never complete or notify.
        return
    rid = request["_id"]
    now = await db_now(store)  # one clock for every host's leases
    lease = {"publish_lease_until": now + timedelta(seconds=lease_seconds)}
    if request["status"] not in TERMINAL_STATUSES:
        status = terminal_status(succeeded, failed)
        won = await store.requests.update_one(
            {"_id": rid, "status": {"$nin": list(TERMINAL_STATUSES)}, "accepted": True,
             "withdrawn": {"$ne": True}},
            {"$set": {"status": status, "completed_at": now, "updated_at": now, **lease}})
        if won.modified_count:
            log.info("request finished: %s (%s ok, %s failed)", status, succeeded, failed)
    else:  # finished earlier, not yet published: a holder whose lease ran out crashed
        won = await store.requests.update_one(
            {"_id": rid, "completion_published": {"$ne": True},
             "$or": [{"publish_lease_until": None}, {"publish_lease_until": {"$lt": now}}]},
            {"$set": lease})
    if not won.modified_count:
        fresh = await store.requests.find_one({"_id": rid}, {"completion_published": 1})
        if fresh and fresh.get("completion_published"):
            return
        raise TransientError("another consumer is publishing this request's completion",
                             code="completion_in_progress")
    fresh = await store.requests.find_one({"_id": rid})
    assert fresh is not None
    try:
        await publish(RequestCompleted(
            request_id=rid, status=fresh["status"], total=fresh["image_count"],
            succeeded=fresh["succeeded"], failed=fresh["failed"],
            completed_at=fresh["completed_at"]))
    except BaseException:
        await store.requests.update_one({"_id": rid}, {"$set": {"publish_lease_until": None}})
        raise
    await store.requests.update_one({"_id": rid}, {"$set": {"completion_published": True},
                                                   "$unset": {"publish_lease_until": ""}})


DEAD_LETTERS_KEPT = 20


async def note_dead_letter(store: Store, ev: AnyEvent, error: Exception) -> None:
    """Mark the request of an event that was dead-lettered (an invalid event, or
    a bug retried to its limit): until it is replayed the request may never
    finish, and the status API shows why. Idempotent for a redelivered message
    (the last ``DEAD_LETTERS_KEPT`` event ids are kept)."""
    # Shown by the public status API: an unexpected error's details stay in the log.
    text = (str(error) if isinstance(error, ImgpipeError)  # code: message
            else f"internal_error: unexpected {type(error).__name__} (see the aggregator's log)")
    entry = {"event_id": ev.event_id, "event_type": ev.event_type, "error": text[:500],
             "at": now_utc()}
    await store.requests.update_one(
        {"_id": ev.request_id, "dead_letters.event_id": {"$ne": ev.event_id}},
        {"$push": {"dead_letters": {"$each": [entry], "$slice": -DEAD_LETTERS_KEPT}},
         "$inc": {"dead_letter_count": 1}})
