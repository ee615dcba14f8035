"""On request-completed: store the output CSV, then call the webhook.

Both steps are idempotent: the CSV key is fixed per request, and a delivered
webhook is recorded, so a re-delivered event neither rebuilds a stored CSV nor
notifies twice. Every notification carries an ``Idempotency-Key`` header so a
receiver can drop the rare duplicate (a crash between sending and recording).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.notifier.settings import Settings
from shared import signing
from shared.errors import ImgpipeError
from shared.events import RequestCompleted, now_utc
from shared.logs import request_id_var
from shared.mongo import Store
from shared.outputcsv import build_output_csv
from shared.storage import ObjectStore

log = logging.getLogger(__name__)
PERMANENT_HTTP = range(400, 500)
RETRYABLE_4XX = {408, 425, 429}


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
    csv_url = doc.get("output_csv_url")
    if not csv_url:
        data = await build_output_csv(deps.store, ev.request_id)
        csv_url = await deps.objects.put(f"{ev.request_id}/output.csv", data,
                                         "text/csv; charset=utf-8")
        await deps.store.requests.update_one({"_id": ev.request_id},
                                             {"$set": {"output_csv_url": csv_url}})
        log.info("output CSV stored at %s", csv_url)
    hook = doc.get("webhook") or {}
    if doc.get("webhook_url") and hook.get("status") not in ("delivered", "failed"):
        await deliver(deps, doc["webhook_url"], payload(deps.settings, ev, csv_url))


def payload(s: Settings, ev: RequestCompleted, csv_url: str) -> dict[str, Any]:
    # One id per completion: stable across re-deliveries of this completion,
    # new when an operator resets and reprocesses the request.
    notification_id = f"{ev.request_id}:{ev.completed_at.isoformat()}"
    return {"event": "request.completed", "notification_id": notification_id,
            "event_id": ev.event_id,
            "request_id": ev.request_id, "status": ev.status, "total": ev.total,
            "succeeded": ev.succeeded, "failed": ev.failed,
            "completed_at": ev.completed_at.isoformat(), "output_csv_url": csv_url,
            "status_url": s.status_url(ev.request_id)}


async def deliver(deps: Deps, url: str, body_obj: dict[str, Any]) -> None:
    s, requests = deps.settings, deps.store.requests
    rid = body_obj["request_id"]
    body = json.dumps(body_obj).encode()
    for attempt in range(1, s.webhook_max_attempts + 1):
        headers = {"Content-Type": "application/json", "X-Imgpipe-Event": "request.completed",
                   "Idempotency-Key": body_obj["notification_id"]}
        if s.webhook_secret:
            headers[signing.HEADER] = signing.sign(s.webhook_secret, body)
        error, permanent = await _post(deps.http, url, body, headers)
        if error is None:
            await requests.update_one({"_id": rid}, {
                "$set": {"webhook.status": "delivered", "webhook.delivered_at": now_utc(),
                         "webhook.last_error": None}, "$inc": {"webhook.attempts": 1}})
            log.info("webhook delivered to %s (attempt %s)", url, attempt)
            return
        final = permanent or attempt == s.webhook_max_attempts
        await requests.update_one({"_id": rid}, {
            "$set": {"webhook.last_error": error,
                     **({"webhook.status": "failed"} if final else {})},
            "$inc": {"webhook.attempts": 1}})
        log.warning("webhook attempt %s to %s failed: %s", attempt, url, error)
        if final:
            return
        delay = min(s.webhook_backoff_max, s.webhook_backoff_base * 2 ** (attempt - 1))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


async def _post(http: aiohttp.ClientSession, url: str, body: bytes,
                headers: dict[str, str]) -> tuple[str | None, bool]:
    """(error or None, whether the error is permanent)."""
    try:
        async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            if 200 <= resp.status < 300:
                return None, False
            permanent = resp.status in PERMANENT_HTTP and resp.status not in RETRYABLE_4XX
            if 300 <= resp.status < 400:
                return f"http_{resp.status}: webhooks do not follow redirects", True
            return f"http_{resp.status}", permanent
    except ImgpipeError as exc:  # refused by the address guard
        return f"{exc.code}: {exc.message}", True
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"connection_failed: {exc!r}", False
