"""Per-request bookkeeping in MongoDB, safe under at-least-once delivery.

Each URL position has one ``images`` document whose ``_id`` is the position
(request, serial, index): inserting it is the guard that makes counting
idempotent. An event records its own position and every position of its
``also`` list (a URL repeated within the request: one insert of them all,
duplicates skipped). Only the consumer whose insert succeeded increments the
request's counters, by the positions it inserted (``covered``: how many of
them came from ``also``), then marks them ``counted`` (the ``also`` positions
through their event's own position: see :func:`record_image_done`). A
duplicate of a counted image changes nothing (cheap: no recount, so replaying
a big request stays linear).
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
from pymongo.errors import BulkWriteError

from shared.errors import ImgpipeError, TransientError
from shared.events import (
    AnyEvent,
    ImageDone,
    PositionRef,
    RequestCompleted,
    RequestCreated,
    now_utc,
)
from shared.logs import request_id_var
from shared.mongo import Store, db_now, position_id
from shared.requests import (
    TERMINAL_STATUSES,
    Status,
    count_image,
    finish,
    new_request_doc,
    terminal_status,
)

log = logging.getLogger(__name__)
Publish = Callable[[RequestCompleted], Awaitable[None]]
DUPLICATE_KEY = 11000
PUBLISH_LEASE_SECONDS = 15.0  # one publish; a crashed holder stalls its agent this long


async def record_request_created(store: Store, ev: RequestCreated,
                                 publish: Publish | None = None) -> None:
    """Ingest stores the request itself before the relay publishes this event
    (first, before the request's images), so here the request is checked for
    completion (a request of no images, or a re-published event). On a replay
    into an empty database the request is re-created (``$setOnInsert`` only:
    live state is never overwritten) and recounted, since its images may have
    been recorded first."""
    fresh = new_request_doc(
        ev.request_id, product_count=ev.product_count, image_count=ev.image_count,
        webhook_url=ev.webhook_url, created_at=ev.created_at, filename=ev.source_filename,
        status=Status.QUEUED, page_rows=ev.page_rows, tenant=ev.tenant,
        relay={"published": ev.image_count, "page": 0, "skip": 0, "created_sent": True})
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
    """Record the result for the event's position and each of its ``also``
    positions (one ``images`` document each; the first result of a position
    wins), count the newly recorded ones, then check for completion.

    The ``also`` positions are inserted after the event's own position. When
    this call inserted its own position, they are inserted ``counted`` at
    once: their count rides on the own position's flag (set after the
    increment, as for any image), so a crash before the increment leaves the
    own position uncounted and its redelivery recounts, and a thousand
    positions cost no thousand updates. Otherwise each is flagged itself.
    """
    request_id_var.set(ev.request_id)
    now = now_utc()
    own, *others = image_docs(ev, now)
    own_new = bool(await insert_new(store, [own]))
    if own_new:
        for doc in others:
            doc["counted"] = True
    new = await insert_new(store, others) if others else set()
    duplicates = ([] if own_new else [own["_id"]]) + [
        d["_id"] for d in others if d["_id"] not in new]
    # The first result recorded for a position wins (it is what
    # shared/products.py reads as the output); are the duplicates counted yet?
    if duplicates and await any_uncounted(store, duplicates):
        # a delivery died between its insert and its increment
        log.info("duplicate image-done for %s before it was counted; recounting", own["_id"])
        request = await recount(store, ev.request_id)  # counts this call's inserts too
        to_mark = [own["_id"]] + [d["_id"] for d in others]
    elif own_new or new:
        field = "succeeded" if ev.status == "succeeded" else "failed"
        request = await store.requests.find_one_and_update(
            {"_id": ev.request_id}, count_image(field, now, own_new + len(new), len(new)),
            return_document=ReturnDocument.AFTER)
        to_mark = [own["_id"]] if own_new else sorted(new)
    else:  # plain duplicates: their increment is known to be done
        request = await store.requests.find_one({"_id": ev.request_id})
        to_mark = []
    if request is None:
        log.warning("image-done for unknown request %s ignored", ev.request_id)
        return
    for chunk in chunks(to_mark):
        await store.images.update_many({"_id": {"$in": chunk}, "counted": {"$ne": True}},
                                       {"$set": {"counted": True}})
    await maybe_complete(store, request, publish)


IN_CHUNK = 100  # ids per $in: SecantusDB matches each document against the list


def chunks(ids: list[str], size: int = IN_CHUNK) -> list[list[str]]:
    return [ids[k:k + size] for k in range(0, len(ids), size)]


async def any_uncounted(store: Store, ids: list[str]) -> bool:
    for chunk in chunks(ids):
        if await store.images.find_one({"_id": {"$in": chunk}, "counted": {"$ne": True}},
                                       {"_id": 1}) is not None:
            return True
    return False


async def insert_new(store: Store, docs: list[dict[str, Any]]) -> set[str]:
    """Insert the documents that are not there yet; the ids inserted."""
    try:
        await store.images.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        failed = {e["index"] for e in errors}
        return {d["_id"] for k, d in enumerate(docs) if k not in failed}
    return {d["_id"] for d in docs}


def image_docs(ev: ImageDone, now: Any) -> list[dict[str, Any]]:
    """The ``images`` documents of an event: its own position's, then one per
    ``also`` position (``via``: the position whose event recorded it)."""
    own = image_doc(ev, now)
    return [own] + [image_doc(ev, now, at) | {"via": own["_id"]} for at in ev.also]


def image_doc(ev: ImageDone, now: Any, at: PositionRef | None = None) -> dict[str, Any]:
    row, serial, position = (ev.row, ev.serial, ev.position) if at is None else (
        at.row, at.serial, at.position)
    return {
        "_id": position_id(ev.request_id, serial, position),
        "request_id": ev.request_id, "image_id": ev.image_id, "serial": serial,
        "row": row, "position": position, "input_url": ev.url, "status": ev.status,
        "output_url": ev.output_url, "error_code": ev.error_code,
        "error_message": ev.error_message, "bytes_in": ev.bytes_in, "bytes_out": ev.bytes_out,
        "quality_in": ev.quality_in, "quality_out": ev.quality_out,
        "quality_method": ev.quality_method, "source_format": ev.source_format,
        "output_format": ev.output_format, "kept_original": ev.kept_original,
        "source": ev.source, "processed_at": ev.occurred_at, "recorded_at": now,
        "via": None,  # recorded from its own event
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
    covered = await store.images.count_documents({"request_id": request_id,
                                                  "via": {"$ne": None}})
    return await store.requests.find_one_and_update(
        {"_id": request_id}, {"$max": {**counts, "covered": covered}},
        return_document=ReturnDocument.AFTER)


async def maybe_complete(store: Store, request: dict[str, Any], publish: Publish, *,
                         lease_seconds: float = PUBLISH_LEASE_SECONDS) -> None:
    succeeded, failed = request["succeeded"], request["failed"]
    if succeeded + failed < request["image_count"] or request.get("completion_published"):
        return
    rid = request["_id"]
    now = await db_now(store)  # one clock for every host's leases
    lease = {"publish_lease_until": now + timedelta(seconds=lease_seconds)}
    if request["status"] not in TERMINAL_STATUSES:
        status = terminal_status(succeeded, failed)
        won = await finish(store, rid, status, now, lease)
        if won:
            log.info("request finished: %s (%s ok, %s failed)", status, succeeded, failed)
    else:  # finished earlier, not yet published: a holder whose lease ran out crashed
        won = bool((await store.requests.update_one(
            {"_id": rid, "completion_published": {"$ne": True},
             "$or": [{"publish_lease_until": None}, {"publish_lease_until": {"$lt": now}}]},
            {"$set": lease})).modified_count)
    if not won:
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
