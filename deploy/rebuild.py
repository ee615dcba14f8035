"""Rebuild requests into an empty database from their events (recovery).

    python -m deploy.rebuild --request-id ID [--request-id ...] [--dry-run]

Every event carries its row: ``request.created`` the request (counts,
webhook, file name, rows per page), each ``image.requested`` its product
(serial, row, name) and URL position, and the other positions of a repeated
URL it stands for (``also``). From those this tool writes the request's
product pages exactly as ingest stored them, then publishes the request's
``request.created`` and ``image.done`` events again: the aggregator
re-creates the request, counts every image and completes it, and the notifier
writes its output CSV and calls its webhook (again: webhooks are at least
once). Status, products and the output CSV come out as before (the output CSV
byte for byte); only the times of the rebuild itself are new.

It refuses, changing nothing, when a request is still in the database (use a
plain replay or ``--reset``), or when the topics lack any of its rows or
results (retention): a partial rebuild would look complete.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any

from pymongo.errors import BulkWriteError
from tqdm import tqdm

from deploy.replay import ReplayRefused, collect
from shared.events import AnyEvent, ImageDone, ImageRequested, RequestCreated
from shared.kafka import EventPublisher
from shared.mongo import Store, make_client
from shared.products import PageBuilder
from shared.settings import CommonSettings
from shared.topics import Topic

log = logging.getLogger("replay")
DUPLICATE_KEY = 11000


@dataclass
class Plan:
    created: RequestCreated
    pages: list[dict[str, Any]]
    results: list[ImageDone]


def rows_of(created: RequestCreated, events: list[ImageRequested]) -> list[dict[str, Any]]:
    """The request's rows as ingest stored them, from its image events."""
    rid = created.request_id
    rows: dict[int, dict[str, Any]] = {}

    def place(row: int, serial: int, name: str | None, position: int, url: str) -> None:
        found = rows.setdefault(row, {"serial": serial, "name": name, "urls": {}})
        found["name"] = found["name"] or name
        found["urls"][position] = url

    for ev in events:
        if ev.row is None:
            raise ReplayRefused(f"request {rid}: its events predate rows in events; "
                                "it cannot be rebuilt")
        place(ev.row, ev.serial, ev.product_name, ev.position, ev.url)
        for ref in getattr(ev, "also", None) or []:
            place(ref.row, ref.serial, getattr(ref, "product_name", None), ref.position, ev.url)
    missing = [r for r in range(created.product_count)
               if r not in rows or rows[r]["name"] is None
               or sorted(rows[r]["urls"]) != list(range(len(rows[r]["urls"])))]
    positions = sum(len(r["urls"]) for r in rows.values())
    if missing or len(rows) != created.product_count or positions != created.image_count:
        raise ReplayRefused(
            f"request {rid}: the topic holds {len(rows)} of its {created.product_count} rows "
            f"and {positions} of its {created.image_count} URL positions"
            + (f" (row {missing[0]} incomplete)" if missing else "")
            + " (retention?): nothing rebuilt")
    return [{"serial": rows[r]["serial"], "name": rows[r]["name"], "line": None,
             "input_urls": [rows[r]["urls"][p] for p in range(len(rows[r]["urls"]))]}
            for r in range(created.product_count)]


def plan(created: RequestCreated | None, request_id: str, requested: list[ImageRequested],
         done: list[ImageDone]) -> Plan:
    if created is None:
        raise ReplayRefused(f"request {request_id}: no request.created event on the topic")
    if not created.page_rows:
        raise ReplayRefused(f"request {request_id}: its request.created predates page_rows")
    rows = rows_of(created, requested)
    covered = len(done) + sum(len(getattr(d, "also", None) or []) for d in done)
    if covered < created.image_count:
        raise ReplayRefused(f"request {request_id}: results for {covered} of its "
                            f"{created.image_count} images on the topic: nothing rebuilt")
    builder = PageBuilder(request_id, created.page_rows)
    pages = [p for r in rows if (p := builder.add(r["serial"], r["name"], r["line"],
                                                    r["input_urls"])) is not None]
    if (last := builder.flush()) is not None:
        pages.append(last)
    return Plan(created, pages, done)


def of(events: list[AnyEvent], kind: type[Any], request_id: str) -> list[Any]:
    return [e for e in events if isinstance(e, kind) and e.request_id == request_id]


async def rebuild(s: CommonSettings, request_ids: list[str], *, idle: float,
                  dry_run: bool, max_seconds: float = 600.0) -> int:
    """Rebuild ``request_ids``; the number of events published."""
    wanted = set(request_ids)
    created = await collect(s, Topic.REQUEST_CREATED, wanted, idle, max_seconds)
    requested = await collect(s, Topic.IMAGE_REQUESTED, wanted, idle, max_seconds)
    done = await collect(s, Topic.IMAGE_DONE, wanted, idle, max_seconds)
    plans = [plan(next(iter(of(created, RequestCreated, rid)), None), rid,
                  of(requested, ImageRequested, rid), of(done, ImageDone, rid))
             for rid in sorted(wanted)]
    client = make_client(s)
    try:
        store = Store.from_client(client, s)
        for p in plans:
            if await store.requests.find_one({"_id": p.created.request_id}, {"_id": 1}):
                raise ReplayRefused(f"request {p.created.request_id} is in the database: "
                                    "rebuild only into one without it (replay, or --reset)")
        if dry_run:
            return sum(1 + len(p.results) for p in plans)
        for p in plans:
            await insert_pages(store, p.pages)
            log.info("request %s: %s product pages written", p.created.request_id,
                     len(p.pages))
    finally:
        await client.close()
    return await publish(s, plans)


async def insert_pages(store: Store, pages: list[dict[str, Any]]) -> None:
    """Insert pages; one already there (an interrupted rebuild) counts as written."""
    try:
        await store.product_pages.insert_many(pages, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise


async def publish(s: CommonSettings, plans: list[Plan]) -> int:
    publisher = EventPublisher(s, client_id="imgpipe-rebuild")
    await publisher.start()
    sent = 0
    try:
        for p in plans:  # the request first: the aggregator counts against it
            await publisher.publish(p.created)
            for start in tqdm(range(0, len(p.results), 1000), desc=p.created.request_id,
                              unit=" batches", file=sys.stderr):
                await publisher.publish_many(p.results[start:start + 1000])
            sent += 1 + len(p.results)
    finally:
        await publisher.stop()
    log.info("rebuilt %s request(s): %s event(s) published", len(plans), sent)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild imgpipe requests into a database "
                                                 "without them, from their Kafka events.")
    parser.add_argument("--request-id", action="append", dest="request_ids", required=True,
                        help="the request to rebuild (repeatable)")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="stop reading a topic after this many seconds without new events")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="give up (changing nothing) if a topic never goes quiet")
    parser.add_argument("--dry-run", action="store_true",
                        help="check that the events are all there; write and publish nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(rebuild(CommonSettings(), args.request_ids, idle=args.idle,
                            dry_run=args.dry_run, max_seconds=args.max_seconds))
    except ReplayRefused as exc:
        log.error("refused: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
