"""On request-completed: store the output CSV, then call the webhook.

Both steps are idempotent: the CSV key is fixed per request, and a delivered
webhook is recorded, so a re-delivered event neither rebuilds a stored CSV nor
notifies twice. Every notification carries an ``Idempotency-Key`` header so a
receiver can drop the rare duplicate (a crash between sending and recording).

Delivery is claimed in MongoDB before anything is sent: one notifier at a time
holds a lease (``webhook.lease_until`` / ``webhook.lease_owner``, on the
database's clock) covering one attempt plus its backoff, renewed as each
attempt starts and cleared when delivery ends. ``webhook.attempts`` counts
every attempt ever started (before its POST, so a kill during one still counts),
so ``webhook_max_attempts`` holds across restarts. A duplicate event that finds
the delivery finished returns; one that finds a live lease held elsewhere
raises TransientError (``retry_after``: when that lease runs out), so the
consumer retries it later and, should the holder have crashed, takes over once
the lease has expired. Webhook retries follow ``retry_policy`` (shared.retry).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from pymongo import ReturnDocument

from services.notifier.settings import Settings
from shared import tenants, webhook_signing
from shared.errors import ImgpipeError, PermanentError, TransientError
from shared.events import RequestCompleted, now_utc
from shared.links import output_csv_link
from shared.logs import request_id_var
from shared.mongo import Store, db_now
from shared.outputcsv import write_output_csv
from shared.requests import is_finished
from shared.retry import GiveUp, RetryPolicy, parse_retry_after
from shared.storage import ObjectStore

log = logging.getLogger(__name__)
PERMANENT_HTTP = range(400, 500)
RETRYABLE_4XX = {408, 425, 429}
# Added to the lease for the MongoDB writes around an attempt.
LEASE_SLACK_SECONDS = 5.0
FINISHED = ("delivered", "failed")


@dataclass
class Deps:
    settings: Settings
    store: Store
    objects: ObjectStore
    http: aiohttp.ClientSession


async def on_request_completed(deps: Deps, ev: RequestCompleted) -> None:
    request_id_var.set(ev.request_id)
    doc = await deps.store.requests.find_one({"_id": ev.request_id})
    if doc is None:
        log.warning("request-completed for unknown request; ignored")
        return
    stale = doc.get("completed_at") is not None and _ms(doc["completed_at"]) != _ms(
        ev.completed_at)  # an older completion, from before an operator's reset
    if not is_finished(doc) or stale:
        # Not finished (a stale completion replayed after a reset): never notify for it.
        log.warning("request-completed for a request that is %s; ignored", doc.get("status"))
        return
    csv_url = doc.get("output_csv_url")
    if not csv_url:
        # Spooled to disk past 8 MiB: a huge request does not hold its CSV in memory.
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as tmp:
            try:
                size = await write_output_csv(deps.store, doc, tmp)
            except PermanentError as exc:  # dead-lettered; shown on the request until fixed
                await deps.store.requests.update_one(
                    {"_id": ev.request_id}, {"$set": {"output_csv_error": str(exc)}})
                raise
            tmp.seek(0)
            csv_url = await deps.objects.put_file(f"{ev.request_id}/output.csv", tmp, size,
                                                  "text/csv; charset=utf-8")
        await deps.store.requests.update_one(
            {"_id": ev.request_id},
            {"$set": {"output_csv_url": csv_url}, "$unset": {"output_csv_error": ""}})
        log.info("output CSV stored at %s", csv_url)
    hook = doc.get("webhook") or {}
    if doc.get("webhook_url") and hook.get("status") not in FINISHED:
        keys = await signing_keys(deps, doc)
        await deliver(deps, doc["webhook_url"], payload(deps.settings, ev, csv_url), keys)


async def signing_keys(deps: Deps, doc: dict[str, Any]) -> list[str] | None:
    """The secrets a request's webhook is signed with: its tenant's (made with
    the tenant's first key, rotated by the operator CLI), else the configured
    IMGPIPE_WEBHOOK_SECRET (requests from before tenants). ``[]``: unsigned,
    the explicit opt-out. None: no secret at all (not sent; say so)."""
    if deps.settings.webhook_unsigned:
        return []
    tenant = doc.get("tenant")
    if tenant and (keys := await tenants.webhook_secrets(deps.store, tenant)):
        return keys
    return deps.settings.webhook_secrets() or None


def payload(s: Settings, ev: RequestCompleted, csv_url: str) -> dict[str, Any]:
    # One id per completion: stable across re-deliveries of this completion,
    # new when an operator resets and reprocesses the request.
    notification_id = f"{ev.request_id}:{ev.completed_at.isoformat()}"
    return {"event": "request.completed", "notification_id": notification_id,
            "event_id": ev.event_id,
            "request_id": ev.request_id, "status": ev.status, "total": ev.total,
            "succeeded": ev.succeeded, "failed": ev.failed,
            "completed_at": ev.completed_at.isoformat(),
            # The status API's output.csv (fresh links), not the archived object.
            "output_csv_url": output_csv_link(s, ev.request_id, csv_url),
            "status_url": s.status_url(ev.request_id)}


MESSAGE_IDS = uuid.UUID("2f0c6f7e-5b1d-4a8e-9c3a-7d41e0b6a912")


def message_id(body_obj: dict[str, Any]) -> str:
    """The Standard Webhooks ``webhook-id``: stable for one notification (all
    its attempts, and a delivery repeated after a crash), new after a replay."""
    return "msg_" + uuid.uuid5(MESSAGE_IDS, body_obj["notification_id"]).hex


def _ms(when: datetime) -> int:
    """MongoDB keeps milliseconds: compare times at that precision."""
    return int(when.timestamp() * 1000)


def lease_seconds(s: Settings) -> float:
    """Long enough for one attempt (the session's total timeout) plus the
    longest backoff sleep after it: renewed after each attempt, it never lapses
    while its holder is alive."""
    return s.webhook_timeout + s.webhook_backoff_max + LEASE_SLACK_SECONDS


def retry_policy(s: Settings) -> RetryPolicy:
    """Webhook retries: exponential backoff with full jitter (a receiver's
    ``Retry-After`` honoured, capped), ``webhook_max_attempts`` in all."""
    return RetryPolicy(base=s.webhook_backoff_base, cap=s.webhook_backoff_max,
                       max_attempts=s.webhook_max_attempts)


async def claim(deps: Deps, rid: str, owner: str) -> dict[str, Any] | None:
    """Take the delivery lease: the request document, or None if not ours to send.

    None and return: the delivery is finished (or there is none). TransientError:
    another delivery holds a live lease (retry later; it may have died)."""
    now = await db_now(deps.store)  # one clock for every host's leases
    lease = timedelta(seconds=lease_seconds(deps.settings))
    doc: dict[str, Any] | None = await deps.store.requests.find_one_and_update(
        {"_id": rid, "webhook.status": "pending",
         "$or": [{"webhook.lease_until": None}, {"webhook.lease_until": {"$lt": now}}]},
        {"$set": {"webhook.lease_until": now + lease, "webhook.lease_owner": owner}},
        return_document=ReturnDocument.AFTER)
    if doc is not None:
        return doc
    current = await deps.store.requests.find_one({"_id": rid}, {"webhook": 1})
    hook = (current or {}).get("webhook") or {}
    if hook.get("status") != "pending":
        log.info("webhook already %s; not sent again", hook.get("status"))
        return None
    until = hook.get("lease_until")
    wait = (until - now).total_seconds() if isinstance(until, datetime) else None
    raise TransientError(f"webhook delivery in progress elsewhere (lease until {until})",
                         code="webhook_in_progress", retry_after=wait)


async def deliver(deps: Deps, url: str, body_obj: dict[str, Any],
                  keys: list[str] | None) -> None:
    """Send ``body_obj`` signed with ``keys`` (``[]``: unsigned; None: no
    secret, so the delivery fails at once, saying why)."""
    s, requests = deps.settings, deps.store.requests
    rid = body_obj["request_id"]
    owner = uuid.uuid4().hex
    doc = await claim(deps, rid, owner)
    if doc is None:
        return
    mine = {"_id": rid, "webhook.lease_owner": owner}
    release = {"webhook.lease_until": None, "webhook.lease_owner": None}
    if keys is None:
        why = ("webhook_secret_missing: the tenant has no webhook secret and "
               "IMGPIPE_WEBHOOK_SECRET is not set (or set IMGPIPE_WEBHOOK_UNSIGNED=true)")
        await requests.update_one(mine, {"$set": {"webhook.status": "failed",
                                                  "webhook.last_error": why, **release}})
        log.error("webhook to %s not sent: %s", url, why)
        return
    done = int((doc.get("webhook") or {}).get("attempts") or 0)
    if done >= s.webhook_max_attempts:
        await requests.update_one(mine, {"$set": {"webhook.status": "failed", **release}})
        log.warning("webhook to %s not sent: all %s attempts already made", url, done)
        return
    body = json.dumps(body_obj).encode()
    policy = retry_policy(s)
    for attempt in range(done + 1, s.webhook_max_attempts + 1):
        # Counted before it is made (a kill during the POST still uses it up),
        # with the lease renewed to cover it and the backoff after it.
        renewed = await db_now(deps.store) + timedelta(seconds=lease_seconds(s))
        started = await requests.update_one(mine, {"$set": {"webhook.lease_until": renewed},
                                                   "$inc": {"webhook.attempts": 1}})
        if started.matched_count == 0:
            log.warning("webhook lease to %s lost to another notifier; stopping", url)
            return
        headers = {"Content-Type": "application/json", "X-Imgpipe-Event": "request.completed",
                   "Idempotency-Key": body_obj["notification_id"]}
        if keys:  # signed again for each attempt: a new timestamp
            headers.update(webhook_signing.sign_headers(keys, message_id(body_obj), body))
        error = await _post(deps.http, url, body, headers)
        if error is None:
            await requests.update_one({"_id": rid}, {
                "$set": {"webhook.status": "delivered", "webhook.delivered_at": now_utc(),
                         "webhook.last_error": None, **release}})
            log.info("webhook delivered to %s (attempt %s)", url, attempt)
            return
        decision = policy.decide(error, attempt)
        final = isinstance(decision, GiveUp)
        await requests.update_one(mine, {"$set": {
            "webhook.last_error": error.message,
            **({"webhook.status": "failed", **release} if final else {})}})
        log.warning("webhook attempt %s to %s failed: %s", attempt, url, error.message)
        if isinstance(decision, GiveUp):
            return
        await asyncio.sleep(decision.delay)


async def _post(http: aiohttp.ClientSession, url: str, body: bytes,
                headers: dict[str, str]) -> ImgpipeError | None:
    """None once delivered; else the failure, classified for the retry policy
    (its ``message`` is what ``webhook.last_error`` shows)."""
    try:
        async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            status, code = resp.status, f"http_{resp.status}"
            if 200 <= status < 300:
                return None
            if 300 <= status < 400:
                return PermanentError(f"{code}: webhooks do not follow redirects", code=code)
            if status in PERMANENT_HTTP and status not in RETRYABLE_4XX:
                return PermanentError(code, code=code)
            return TransientError(code, code=code,
                                  retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    except TransientError as exc:
        return TransientError(f"{exc.code}: {exc.message}", code=exc.code,
                              retry_after=exc.retry_after)
    except ImgpipeError as exc:  # refused by the address guard
        return PermanentError(f"{exc.code}: {exc.message}", code=exc.code)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return TransientError(f"connection_failed: {exc!r}", code="connection_failed")
