"""Replay events from a Kafka topic to reprocess requests.

    python -m deploy.replay --topic image.requested --request-id ID [--reset]
    python -m deploy.replay --topic image.done --request-id ID
    python -m deploy.replay --topic request.completed --request-id ID   # re-notify

It reads the topic from the beginning (a group-less consumer, so no service's
offsets move) until it has been idle for ``--idle`` seconds, keeps the events
of the chosen request(s) and publishes them again, unchanged but for a
``replay_id`` on image requests (so the processor redoes them rather than
answering from its cache of recent results). Every consumer
is idempotent, so a plain replay repairs what is missing and changes nothing
else (objects are overwritten under the same keys).

``--reset`` first clears the request's results in MongoDB (per-image results,
which hold the output URLs; counts, output CSV, webhook state), so the replayed
images are processed and counted afresh, the request completes again, a new output CSV
is written and the webhook is called again. Use it on a finished request.

A request missing from the database (a restore, a new cluster) is re-created
from its events alone by ``python -m deploy.rebuild`` (deploy/rebuild.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from shared import requests
from shared.errors import InvalidInputError
from shared.events import AnyEvent, ImageDone, ImageRequested, decode
from shared.kafka import EventPublisher, topic_partitions
from shared.mongo import Store, make_client
from shared.settings import CommonSettings
from shared.topics import Topic

log = logging.getLogger("replay")
TOPICS = {t.value.removesuffix(".v1"): t for t in Topic if t is not Topic.DEAD_LETTER}
RESETTABLE = (Topic.IMAGE_REQUESTED, Topic.IMAGE_DONE)


class ReplayRefused(Exception):
    """The replay would leave a request worse off; nothing was changed."""


def identity(event: AnyEvent) -> tuple[object, ...]:
    """What makes two events the same work: one URL position, or one request."""
    if isinstance(event, ImageRequested | ImageDone):
        return (event.request_id, event.serial, event.position)
    return (event.request_id,)


async def collect(s: CommonSettings, topic: Topic, request_ids: set[str] | None,
                  idle: float, max_seconds: float = 600.0) -> list[AnyEvent]:
    """Read the whole topic (until idle) and keep the matching events, one per
    position (or per request): the latest, since earlier replays added copies."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    kept: dict[tuple[object, ...], AnyEvent] = {}
    try:
        name = topic.full(s.topic_prefix)
        tps = [TopicPartition(name, p) for p in await topic_partitions(s, name)]
        if not tps:
            raise ReplayRefused(f"topic {name} does not exist (IMGPIPE_TOPIC_PREFIX?)")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last = start = time.monotonic()
        with tqdm(desc=f"reading {name}", unit=" events", file=sys.stderr) as bar:
            while time.monotonic() - last < idle:
                if time.monotonic() - start > max_seconds:
                    raise ReplayRefused(
                        f"{name} did not go quiet for {idle:.0f}s within {max_seconds:.0f}s "
                        "(a busy topic): replay when traffic is lower, or raise --max-seconds")
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                for records in batch.values():
                    last = time.monotonic()
                    bar.update(len(records))
                    for rec in records:
                        try:
                            event = decode(rec.value)
                        except InvalidInputError:
                            continue
                        if request_ids is None or event.request_id in request_ids:
                            kept[identity(event)] = event
    finally:
        await consumer.stop()
    return list(kept.values())


async def check_complete(store: Store, request_id: str, events: list[AnyEvent]) -> None:
    """A reset is only safe when every position of the request will be replayed."""
    request = await store.requests.find_one({"_id": request_id})
    if request is None:
        raise ReplayRefused(f"no request {request_id} in MongoDB")
    found = len(positions(events, request_id))
    if found != request["image_count"]:
        raise ReplayRefused(
            f"request {request_id} has {request['image_count']} images but only {found} "
            "were found on the topic (retention?): a reset would leave it unfinished. "
            "Replay without --reset, or pass --force.")


def positions(events: list[AnyEvent], request_id: str) -> set[tuple[int, int]]:
    """The (serial, position) pairs the request's image events stand for: an
    event's own and those of its ``also`` (a URL repeated within the request)."""
    out: set[tuple[int, int]] = set()
    for e in events:
        if isinstance(e, ImageRequested | ImageDone) and e.request_id == request_id:
            out.add((e.serial, e.position))
            out.update((a.serial, a.position) for a in e.also)
    return out


async def reset(store: Store, request_id: str) -> None:
    request = await store.requests.find_one({"_id": request_id})
    if request is None:
        raise ReplayRefused(f"no request {request_id} in MongoDB")
    await store.images.delete_many({"request_id": request_id})
    await requests.reset(store, request)
    log.info("reset request %s", request_id)


def mark(event: AnyEvent, replay_id: str) -> AnyEvent:
    """Image requests carry the run's replay id, so they are really redone."""
    if isinstance(event, ImageRequested):
        return event.model_copy(update={"replay_id": replay_id})
    return event


async def replay(s: CommonSettings, topic: Topic, request_ids: list[str] | None, *,
                 do_reset: bool, idle: float, dry_run: bool, force: bool = False,
                 max_seconds: float = 600.0) -> int:
    if do_reset and topic not in RESETTABLE:
        raise ReplayRefused("--reset only goes with image.requested or image.done: replaying "
                            f"{topic.value} after a reset would leave the request unfinished")
    wanted = set(request_ids) if request_ids else None
    found = await collect(s, topic, wanted, idle, max_seconds)
    log.info("%s matching event(s) found on %s", len(found), topic.full(s.topic_prefix))
    if dry_run or not found:
        return len(found)
    if do_reset:
        client = make_client(s)
        try:
            store = Store.from_client(client, s)
            for rid in sorted(wanted or set()):
                if not force:
                    await check_complete(store, rid, found)
            for rid in sorted(wanted or set()):
                await reset(store, rid)
        finally:
            await client.close()
    publisher = EventPublisher(s, client_id="imgpipe-replay")
    await publisher.start()
    try:
        replay_id = str(uuid.uuid4())
        events = [mark(event, replay_id) for event in found]
        for start in tqdm(range(0, len(events), 1000), desc="publishing", unit=" batches",
                          file=sys.stderr):
            await publisher.publish_many(events[start:start + 1000])
    finally:
        await publisher.stop()
    log.info("replayed %s event(s)", len(events))
    return len(events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay imgpipe events from Kafka.")
    parser.add_argument("--topic", required=True, choices=sorted(TOPICS))
    parser.add_argument("--request-id", action="append", dest="request_ids",
                        help="replay only this request (repeatable); default: every request")
    parser.add_argument("--reset", action="store_true",
                        help="clear the request's results first, so it is fully reprocessed")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="stop reading after this many seconds without new events")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="give up (changing nothing) if the topic never goes quiet")
    parser.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    parser.add_argument("--force", action="store_true",
                        help="reset even if not every image of the request was found")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.reset and not args.request_ids:
        parser.error("--reset needs --request-id (it resets one request at a time)")
    settings = CommonSettings()
    try:
        asyncio.run(replay(settings, TOPICS[args.topic], args.request_ids, do_reset=args.reset,
                           idle=args.idle, dry_run=args.dry_run, force=args.force,
                           max_seconds=args.max_seconds))
    except ReplayRefused as exc:
        log.error("refused: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
