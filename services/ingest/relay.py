"""The relay: publishes the events of stored (``QUEUED``) requests, fairly.

An upload is answered ``202`` once its request and pages are durable in
MongoDB (the outbox). The relay then publishes ``request.created`` and one
``image.requested`` per URL position, reading the stored pages from a cursor
kept on the request (``relay``: page, positions of it already passed, total
positions published, ``covered``: how many of those were passed without an
event), so a crashed relay resumes where it was; a batch published again
after a crash is harmless (every consumer is idempotent). A URL repeated
within a request has one event per distinct URL (per ``MAX_ALSO + 1``
positions), which lists the positions it covers (``also``); covered positions
count as published but cost no credit (``relay_read.py``, ``repeats.py``).

Fairness: the relay works in rounds over every request with events left,
taking the tenants in turn (each tenant's first request, then each one's
second, ..., tenants and their requests in arrival order), and gives each
request at most ``relay_batch`` events a round, and only while it has fewer
than ``relay_window`` image events published but not yet done (its credits
come back as its images finish; see :func:`in_flight`) and its tenant fewer
than ``relay_tenant_window``. So a small request is published whole in its
first round and never waits behind a big one's backlog, a tenant with many
requests does not crowd out one with a few, and Kafka never holds more than
``relay_max_in_flight`` unfinished images in all, whatever arrives.

One relay is active at a time: the ingest instance holding the ``relay``
lease (database clock); the others wait to take over. The lease holder also
sweeps uploads abandoned while ``RECEIVING`` (their client never got a 202).

Failures follow ``shared.retry``: a transient one (MongoDB, Kafka) fails the
round, which is retried with backoff; a request that cannot be relayed for
any other reason (its pages are gone, a bug) is logged and skipped for the
policy's backoff, then for its cap each time, so it never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from services.ingest.reconciler import Reconciler
from services.ingest.relay_read import StoredEvents
from services.ingest.settings import Settings
from shared.events import RequestCreated
from shared.kafka import EventPublisher
from shared.mongo import Store, db_now
from shared.products import id_range
from shared.requests import (
    ACTIVE,
    RELAY_PENDING,
    abandoned_receiving,
    advance_relay,
    drop_receiving,
    relay_failed,
)
from shared.retry import DEFAULT_POLICY, Retry, RetryPolicy, is_transient, retry_after_of
from shared.topics import Topic

log = logging.getLogger(__name__)
LEASE_ID = "relay"
SWEEP_EVERY_SECONDS = 10.0
WORK_FIELDS = {"relay": 1, "succeeded": 1, "failed": 1, "covered": 1, "image_count": 1,
               "product_count": 1, "page_rows": 1, "created_at": 1, "webhook_url": 1,
               "filename": 1, "tenant": 1}


@dataclass
class Relay:
    settings: Settings
    store: Store
    publisher: EventPublisher
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reconciler: Reconciler | None = None
    retry: RetryPolicy = DEFAULT_POLICY
    published: int = 0  # events published by this instance (for /health)
    leader: bool = False
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Requests that failed to relay: (failures, loop time before which they are skipped).
    _held: dict[str, tuple[int, float]] = field(default_factory=dict)

    events: StoredEvents = field(init=False)

    def __post_init__(self) -> None:
        self.events = StoredEvents(self.store, 4 * self.settings.relay_max_active)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"leader": self.leader, "published": self.published}
        if self.reconciler is not None:
            out.update(redriven=self.reconciler.redriven, given_up=self.reconciler.given_up)
        return out

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    async def run(self) -> None:
        """Relay until stopped; transient trouble (MongoDB, Kafka) is retried.
        The lease holder also sweeps abandoned uploads and runs the reconciler."""
        failures = 0
        loop = asyncio.get_running_loop()
        last_reconcile = last_sweep = loop.time()
        while not self._stopping.is_set():
            try:
                sent = await self.round() if await self.hold_lease() else 0
                if self.leader and loop.time() - last_sweep >= SWEEP_EVERY_SECONDS:
                    last_sweep = loop.time()
                    await self.sweep()
                if self.leader and self.reconciler and (
                        loop.time() - last_reconcile >= self.settings.reconcile_interval_seconds):
                    last_reconcile = loop.time()
                    await self.reconciler.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                (log.warning if is_transient(exc) else log.exception)(
                    "relay round failed (retrying): %r", exc)
                sent = 0
                await self._pause(self.retry.delay(failures, retry_after_of(exc)))
                continue
            if not sent:
                await self._pause(self.settings.relay_poll_seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)
        self.wake.clear()

    async def hold_lease(self) -> bool:
        """Take or renew the relay lease; False while another instance holds it."""
        now = await db_now(self.store)
        until = now + timedelta(seconds=self.settings.relay_lease_seconds)
        try:
            await self.store.leases.update_one(
                {"_id": LEASE_ID, "$or": [{"holder": self.holder}, {"until": {"$lt": now}}]},
                {"$set": {"holder": self.holder, "until": until}}, upsert=True)
        except DuplicateKeyError:  # held by a live instance
            self.leader = False
            return False
        self.leader = True
        return True

    async def round(self) -> int:
        """One pass over the requests with events left; the positions relayed
        (published, or passed over as covered by another position's event)."""
        s = self.settings
        work = [doc async for doc in self.store.requests.find(
            {RELAY_PENDING: True}, WORK_FIELDS).sort("created_at", 1).limit(s.relay_max_active)]
        if not work:
            return 0
        # Unfinished images of every active request (fully published ones too), by tenant.
        tenant_load: Counter[str | None] = Counter()
        async for active in self.store.requests.find(ACTIVE, {
                "relay.published": 1, "relay.covered": 1, "succeeded": 1, "failed": 1,
                "covered": 1, "tenant": 1}):
            tenant_load[active.get("tenant")] += in_flight(active)
        budget = s.relay_max_in_flight - sum(tenant_load.values())
        sent = passed = 0
        now = asyncio.get_running_loop().time()
        for doc in tenants_in_turn(work):
            if self._held.get(doc["_id"], (0, now))[1] > now:
                continue  # failed lately: waiting out its backoff
            tenant = doc.get("tenant")
            credit = min(s.relay_window - in_flight(doc), s.relay_batch, budget,
                         s.relay_tenant_window - tenant_load[tenant])
            try:
                n, advanced = await self.relay_one(doc, max(0, credit))
            except Exception as exc:
                if is_transient(exc):
                    raise  # MongoDB or Kafka away: the whole round waits
                await self._hold(doc["_id"], exc, now)  # it must not hold up the others
                continue
            self._held.pop(doc["_id"], None)
            sent, passed, budget = sent + n, passed + advanced, budget - n
            tenant_load[tenant] += n
        self.published += sent
        return passed

    async def _hold(self, rid: str, exc: Exception, now: float) -> None:
        """Skip a request that failed to relay for the policy's backoff; once
        the policy gives up (broken data: a ``PermanentError`` at once, a bug
        after a few tries) stop relaying it and say why on the request, rather
        than retry it every round for ever."""
        failures = self._held.get(rid, (0, now))[0] + 1
        decision = self.retry.decide(exc, failures)
        if not isinstance(decision, Retry):
            log.error("request %s cannot be relayed; stopped relaying it: %r", rid, exc)
            await relay_failed(self.store, rid, str(exc))
            self._held.pop(rid, None)
            return
        log.error("request %s cannot be relayed (failure %s; next try in %.1fs): %r",
                  rid, failures, decision.delay, exc)
        self._held[rid] = (failures, now + decision.delay)
        if len(self._held) > 4 * self.settings.relay_max_active:
            self._held.pop(next(iter(self._held)))

    async def relay_one(self, doc: dict[str, Any], credit: int) -> tuple[int, int]:
        """Publish up to ``credit`` events of one request; move its cursor.
        The events published and the positions relayed."""
        rid, old = doc["_id"], dict(doc["relay"])
        new = dict(old)
        if not old.get("created_sent"):
            await self.publisher.publish(created_event(doc))
            new["created_sent"] = True
        messages: list[tuple[bytes, bytes]] = []
        passed = 0
        if credit:
            messages, passed, covered = await self.events.read(doc, new, credit)
            await self.publisher.publish_encoded(Topic.IMAGE_REQUESTED, messages)
            new["published"] = old.get("published", 0) + passed
            if covered:
                new["covered"] = old.get("covered", 0) + covered
        finished = new["published"] >= doc["image_count"]
        if (new != old or finished) and not await advance_relay(
                self.store, rid, old, new, finished=finished):
            log.warning("relay cursor of %s moved by another relay; skipping it", rid)
            self.events.forget(rid)
            return 0, 0
        if finished:
            self.events.forget(rid)
            log.info("request %s: all %s image positions published (%s by another "
                     "position's event)", rid, doc["image_count"], new.get("covered", 0))
        return len(messages), passed

    async def sweep(self) -> int:
        """Delete uploads abandoned while RECEIVING, with their pages."""
        now = await db_now(self.store)
        stale = abandoned_receiving(now, self.settings.receiving_stale_seconds)
        dropped = 0
        async for doc in self.store.requests.find(stale, {"_id": 1}).limit(100):
            if await drop_receiving(self.store, doc["_id"]):
                await self.store.product_pages.delete_many({"_id": id_range(doc["_id"])})
                await self.store.url_groups.delete_many({"_id": id_range(doc["_id"])})
                dropped += 1
        if dropped:
            log.warning("dropped %s upload(s) abandoned while being received", dropped)
        return dropped


def tenants_in_turn(work: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``work`` (in arrival order) reordered so the tenants take turns: each
    tenant's first request, then each one's second, and so on."""
    queues: dict[str | None, list[dict[str, Any]]] = {}
    for doc in work:
        queues.setdefault(doc.get("tenant"), []).append(doc)
    return [doc for turn in itertools.zip_longest(*queues.values()) for doc in turn if doc]


def in_flight(doc: dict[str, Any]) -> int:
    """Image events published but not yet done: positions published minus
    those covered by another position's event (``relay.covered``), less the
    positions recorded minus those recorded through another's event
    (``covered``, counted by the aggregator)."""
    relay = doc.get("relay") or {}
    events = int(relay.get("published", 0)) - int(relay.get("covered", 0))
    done = doc.get("succeeded", 0) + doc.get("failed", 0) - doc.get("covered", 0)
    return max(0, events - done)


def created_event(doc: dict[str, Any]) -> RequestCreated:
    return RequestCreated(
        request_id=doc["_id"], product_count=doc["product_count"],
        image_count=doc["image_count"], webhook_url=doc.get("webhook_url"),
        created_at=doc["created_at"], source_filename=doc.get("filename"),
        page_rows=doc.get("page_rows"), tenant=doc.get("tenant"))
