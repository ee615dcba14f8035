"""The request lifecycle: one place for the ``requests`` document's fields,
its states and the allowed transitions (docs/database.md has the diagram).

    RECEIVING ──stored──▶ QUEUED ──first image──▶ PROCESSING ──last image──▶ terminal
        │                   └──────────last image (all at once)─────────────▶ terminal
        └─ dropped (a failed or abandoned upload: never answered 202, never relayed)

    terminal = COMPLETED | COMPLETED_WITH_ERRORS | FAILED;  reset: terminal ──▶ QUEUED

- ``RECEIVING``: ingest is storing the product pages; invisible to every API,
  never relayed. A crashed upload's document is dropped by the relay's sweep.
- ``QUEUED``: stored and durable, the client has its ``202``; the relay
  publishes its events (``relay.published`` of ``image_count``).
- ``PROCESSING``: at least one image is done.
- terminal: every image is done; set once, by one conditional update.

Every service changes a request's state through these functions only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.mongo import Store


class Status(StrEnum):
    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"


TERMINAL = (Status.COMPLETED, Status.COMPLETED_WITH_ERRORS, Status.FAILED)
TERMINAL_STATUSES: tuple[str, ...] = tuple(str(s) for s in TERMINAL)
VISIBLE = {"status": {"$ne": str(Status.RECEIVING)}}  # what the APIs may show
ACTIVE = {"status": {"$in": [str(Status.QUEUED), str(Status.PROCESSING)]}}  # being processed
# Counted against a tenant's limit of requests in progress.
ACTIVE_OR_RECEIVING = [str(Status.RECEIVING), str(Status.QUEUED), str(Status.PROCESSING)]
RELAY_PENDING = "relay_pending"  # set while the relay has events to publish


def is_finished(doc: dict[str, Any]) -> bool:
    return doc.get("status") in TERMINAL_STATUSES


def terminal_status(succeeded: int, failed: int) -> Status:
    if failed == 0:
        return Status.COMPLETED
    return Status.FAILED if succeeded == 0 else Status.COMPLETED_WITH_ERRORS


def new_request_doc(request_id: str, *, product_count: int, image_count: int,
                    webhook_url: str | None, created_at: datetime, filename: str | None,
                    status: Status = Status.RECEIVING, **extra: Any) -> dict[str, Any]:
    """A request as first written: by ingest (``RECEIVING``), or by the
    aggregator when a replay into an empty database re-creates it (``QUEUED``).
    One template, so both agree on every field."""
    return {
        "_id": request_id, "status": str(status),
        "product_count": product_count, "image_count": image_count,
        "succeeded": 0, "failed": 0, "covered": 0, "webhook_url": webhook_url,
        "webhook": {"status": "pending" if webhook_url else "none", "attempts": 0},
        "filename": filename, "created_at": created_at, "updated_at": created_at,
        "started_at": None, "completed_at": None, "output_csv_url": None,
        "completion_published": False,
        "relay": {"published": 0, "covered": 0, "page": 0, "skip": 0, "created_sent": False},
        **extra,
    }


# -- ingest -------------------------------------------------------------------
async def touch_receiving(store: Store, request_id: str) -> bool:
    """An upload still being stored shows it is alive (database clock);
    False if it was dropped meanwhile (a retry took over an abandoned one)."""
    result = await store.requests.update_one(
        {"_id": request_id, "status": str(Status.RECEIVING)},
        {"$currentDate": {"updated_at": True}})
    return bool(result.matched_count)


async def mark_stored(store: Store, request_id: str, fields: dict[str, Any]) -> bool:
    """RECEIVING → QUEUED once every page is stored: from now on the request is
    durable, visible and relayed. False if it was dropped meanwhile."""
    result = await store.requests.update_one(
        {"_id": request_id, "status": str(Status.RECEIVING)},
        {"$set": {**fields, "status": str(Status.QUEUED), RELAY_PENDING: True},
         "$currentDate": {"stored_at": True, "updated_at": True}})
    return bool(result.matched_count)


async def drop_receiving(store: Store, request_id: str) -> bool:
    """Delete an upload that never reached QUEUED (and only such a one)."""
    result = await store.requests.delete_one({"_id": request_id,
                                              "status": str(Status.RECEIVING)})
    return bool(result.deleted_count)


def abandoned_receiving(now: datetime, stale_seconds: float) -> dict[str, Any]:
    """The query of uploads that stopped storing ``stale_seconds`` ago."""
    return {"status": str(Status.RECEIVING),
            "updated_at": {"$lt": now - timedelta(seconds=stale_seconds)}}


# -- relay --------------------------------------------------------------------
async def advance_relay(store: Store, request_id: str, old: dict[str, Any],
                        new: dict[str, Any], *, finished: bool) -> bool:
    """Move the relay cursor from ``old`` to ``new`` (compare-and-set: False if
    another relay moved it); ``finished`` ends the request's relaying."""
    update: dict[str, Any] = {"$set": {"relay": new}}
    if finished:
        update["$unset"] = {RELAY_PENDING: ""}
    result = await store.requests.update_one({"_id": request_id, "relay": old}, update)
    return bool(result.modified_count)


# -- aggregator ---------------------------------------------------------------
def count_image(field: str, now: datetime, n: int = 1, covered: int = 0
                ) -> list[dict[str, Any]]:
    """The pipeline update counting ``n`` positions (``succeeded`` or
    ``failed``), ``covered`` of them recorded through another position's event
    (a repeated URL): QUEUED → PROCESSING on the first."""
    return [{"$set": {
        field: {"$add": [f"${field}", n]},
        "covered": {"$add": [{"$ifNull": ["$covered", 0]}, covered]},
        "status": {"$cond": [{"$eq": ["$status", str(Status.QUEUED)]},
                             str(Status.PROCESSING), "$status"]},
        "started_at": {"$ifNull": ["$started_at", now]},
        "updated_at": now,
    }}]


async def finish(store: Store, request_id: str, status: Status, now: datetime,
                 extra: dict[str, Any]) -> bool:
    """→ terminal, by one conditional update only one caller can win."""
    result = await store.requests.update_one(
        {"_id": request_id, **ACTIVE},
        {"$set": {"status": str(status), "completed_at": now, "updated_at": now, **extra}})
    return bool(result.modified_count)


# -- operators ----------------------------------------------------------------
async def reset(store: Store, request: dict[str, Any]) -> None:
    """terminal (or any visible state) → QUEUED with no results, for a replay."""
    hook = "pending" if request.get("webhook_url") else "none"
    await store.requests.update_one({"_id": request["_id"], **VISIBLE}, {
        "$set": {"status": str(Status.QUEUED), "succeeded": 0, "failed": 0, "covered": 0,
                 "completed_at": None, "output_csv_url": None, "completion_published": False,
                 "webhook": {"status": hook, "attempts": 0}},
        # The reconciler starts afresh: a full period before it looks again.
        "$currentDate": {"updated_at": True},
        "$unset": {"started_at": "", "publish_lease_until": "", "output_csv_error": "",
                   "dead_letters": "", "dead_letter_count": "", "redrives": "",
                   "redriven": "", "given_up": ""}})


async def relay_failed(store: Store, request_id: str, error: str) -> None:
    """The relay cannot read this request's stored pages (a damaged database):
    stop relaying it and say why on the request (the status API shows it)."""
    await store.requests.update_one({"_id": request_id}, {
        "$set": {"relay_error": error[:500]}, "$unset": {RELAY_PENDING: ""}})
