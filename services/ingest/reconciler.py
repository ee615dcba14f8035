"""The reconciler: every accepted request finishes, whatever was lost.

Every ``reconcile_interval_seconds`` the relay's lease holder looks for
requests that are not finished and have made no progress (no image counted)
for ``reconcile_after_seconds``. For each, it finds the published positions
with no recorded result (from MongoDB alone: the stored pages
against the ``images`` collection, never a consumer's offsets) and re-drives
exactly those: their ``image.requested`` events are published again (for a
position of a repeated URL, its group leader's event, which lists it in
``also``: services/ingest/repeats.py). Every
re-drive is logged as a warning and counted on the request (``redrives``,
``redriven``); in normal operation there are none, so a non-zero count points
at a bug or an outage. After ``reconcile_max_attempts`` re-drives, positions
still without a result are reported failed (``not_processed``), so the
request finishes with a clear reason instead of waiting for ever.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.ingest.repeats import group_id, leader_of
from services.ingest.settings import Settings
from shared.events import ImageDone, ImageRequestedEncoder, PositionRef, image_id_for
from shared.kafka import EventPublisher
from shared.mongo import Store, db_now, position_id
from shared.products import page_id
from shared.requests import ACTIVE
from shared.topics import Topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Missing:
    serial: int
    row: int
    name: str
    position: int
    urls: list[str]  # the row's
    # (row, position) of the leader of its repeated URL's group (its own if it
    # leads one): that event, with its ``also``, stands for this position.
    leader: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return self.urls[self.position]

    @property
    def ref(self) -> PositionRef:
        return PositionRef(row=self.row, serial=self.serial, position=self.position)


@dataclass
class Reconciler:
    settings: Settings
    store: Store
    publisher: EventPublisher
    redriven: int = 0  # positions re-driven by this instance (for /health)
    given_up: int = 0

    async def run_once(self) -> int:
        """One pass; the number of positions re-driven or given up."""
        s = self.settings
        now = await db_now(self.store)
        stalled = {**ACTIVE,
                   "updated_at": {"$lt": now - timedelta(seconds=s.reconcile_after_seconds)}}
        acted = 0
        async for doc in self.store.requests.find(stalled).limit(100):
            acted += await self.reconcile(doc)
        return acted

    async def reconcile(self, doc: dict[str, Any]) -> int:
        rid = doc["_id"]
        missing = [m async for m in missing_positions(self.store, doc)]
        if not missing:  # all recorded: the aggregator's completion check will run on them
            return 0
        attempts = int(doc.get("redrives", 0))
        if attempts >= self.settings.reconcile_max_attempts:
            await self.give_up(rid, missing, attempts)
            return len(missing)
        log.warning("request %s: no progress for %.0fs and %s position(s) have no result; "
                    "re-driving them (attempt %s of %s)", rid,
                    self.settings.reconcile_after_seconds, len(missing), attempts + 1,
                    self.settings.reconcile_max_attempts)
        messages = await self.events_for(rid, missing)
        await self.publisher.publish_encoded(Topic.IMAGE_REQUESTED, messages)
        # Counts as progress: the next pass waits a full period for the results.
        await self.store.requests.update_one(
            {"_id": rid}, {"$inc": {"redrives": 1, "redriven": len(missing)},
                           "$currentDate": {"updated_at": True}})
        self.redriven += len(missing)
        return len(missing)

    async def events_for(self, rid: str, missing: list[Missing]) -> list[tuple[bytes, bytes]]:
        """The ``image.requested`` events standing for the missing positions:
        a position's own, or its group leader's (with the group's ``also``;
        once per group)."""
        encoder = ImageRequestedEncoder(rid)
        messages, leaders = [], set()
        for m in missing:
            if m.leader is None:
                messages += encoder.encode_product(m.serial, m.row, m.name, m.urls,
                                                   start=m.position, stop=m.position + 1)
            elif m.leader not in leaders:
                leaders.add(m.leader)
                group = await self.store.url_groups.find_one({"_id": group_id(rid, *m.leader)})
                if group is None:  # its positions are given up in the end, with a reason
                    log.error("request %s: the url group of row %s, position %s is missing",
                              rid, *m.leader)
                    continue
                messages.append(encoder.encode_position(
                    group["serial"], group["row"], group["product_name"], group["position"],
                    group["url"], group["also"]))
        return messages

    async def give_up(self, rid: str, missing: list[Missing], attempts: int) -> None:
        """Report every missing position failed, exactly once: one event per
        position, or per group (the first missing position, the others of its
        group in ``also``)."""
        log.warning("request %s: %s position(s) still have no result after %s re-drives; "
                    "reporting them failed", rid, len(missing), attempts)
        by_event: dict[object, list[Missing]] = {}
        for m in missing:
            by_event.setdefault(m.leader or (m.row, m.position, "own"), []).append(m)
        await self.publisher.publish_many([ImageDone(
            request_id=rid, image_id=image_id_for(rid, first.url), serial=first.serial,
            row=first.row, position=first.position, url=first.url,
            also=[m.ref for m in rest], status="failed", error_code="not_processed",
            error_message=f"no result after {attempts} re-drives of this image; "
                          "see the operators' logs") for first, *rest in by_event.values()])
        await self.store.requests.update_one(
            {"_id": rid}, {"$inc": {"given_up": len(missing)},
                           "$currentDate": {"updated_at": True}})
        self.given_up += len(missing)


async def missing_positions(store: Store, doc: dict[str, Any]) -> AsyncIterator[Missing]:
    """Published positions of a request with no ``images`` document, page by page
    (in publication order: the first ``relay.published`` positions)."""
    rid, page_rows = doc["_id"], int(doc.get("page_rows") or 0)
    published = int((doc.get("relay") or {}).get("published", doc["image_count"]))
    if not page_rows:
        return  # re-created from events: its pages are not here to compare with
    seen = 0
    for first in range(0, doc["product_count"], page_rows):
        if seen >= published:
            return
        page = await store.product_pages.find_one({"_id": page_id(rid, first)})
        if page is None:
            continue  # product_rows_missing: shown by the status API, not re-drivable
        wanted: dict[str, tuple[int, dict[str, Any], int]] = {}
        for row, r in enumerate(page["rows"], start=first):
            for k in range(len(r["input_urls"])):
                if seen < published:
                    wanted[position_id(rid, r["serial"], k)] = (row, r, k)
                seen += 1
        async for found in store.images.find({"_id": {"$in": list(wanted)}}, {"_id": 1}):
            wanted.pop(found["_id"], None)
        for row, r, k in wanted.values():
            leader = (row, k) if k in (r.get("lead") or ()) else leader_of(r, k)
            yield Missing(r["serial"], row, r["name"], k, r["input_urls"], leader)
