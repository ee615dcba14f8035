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
output URLs, counts, output CSV, webhook state), so the replayed images are
processed and counted afresh, the request completes again, a new output CSV
is written and the webhook is called again. Use it on a finished request.
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

from shared.errors import InvalidInputError
from shared.events import AnyEvent, ImageRequested, decode
from shared.kafka import EventPublisher
from shared.mongo import Store, make_client
from shared.settings import CommonSettings
from shared.topics import Topic

log = logging.getLogger("replay")
TOPICS = {t.value.removesuffix(".v1"): t for t in Topic if t is not Topic.DEAD_LETTER}


async def collect(s: CommonSettings, topic: Topic, request_ids: set[str] | None,
                  idle: float) -> list[bytes]:
    """Read the whole topic (until idle) and keep matching raw events."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    kept: list[bytes] = []
    try:
        name = topic.full(s.topic_prefix)
        partitions = consumer.partitions_for_topic(name) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last = time.monotonic()
        with tqdm(desc=f"reading {name}", unit=" events", file=sys.stderr) as bar:
            while time.monotonic() - last < idle:
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
                            kept.append(rec.value)
    finally:
        await consumer.stop()
    return kept


async def reset(store: Store, request_id: str) -> None:
    request = await store.requests.find_one({"_id": request_id})
    if request is None:
        raise SystemExit(f"no request {request_id} in MongoDB")
    await store.images.delete_many({"request_id": request_id})
    async for product in store.products.find({"request_id": request_id}, {"input_urls": 1}):
        await store.products.update_one(
            {"_id": product["_id"]},
            {"$set": {"output_urls": [None] * len(product["input_urls"])}})
    hook = "pending" if request.get("webhook_url") else "none"
    await store.requests.update_one({"_id": request_id}, {
        "$set": {"status": "QUEUED", "succeeded": 0, "failed": 0, "completed_at": None,
                 "output_csv_url": None, "completion_published": False,
                 "webhook": {"status": hook, "attempts": 0}},
        "$unset": {"started_at": "", "publish_lease_until": ""}})
    log.info("reset request %s", request_id)


def mark(event: AnyEvent, replay_id: str) -> AnyEvent:
    """Image requests carry the run's replay id, so they are really redone."""
    if isinstance(event, ImageRequested):
        return event.model_copy(update={"replay_id": replay_id})
    return event


async def replay(s: CommonSettings, topic: Topic, request_ids: list[str] | None, *,
                 do_reset: bool, idle: float, dry_run: bool) -> int:
    wanted = set(request_ids) if request_ids else None
    raw_events = await collect(s, topic, wanted, idle)
    log.info("%s matching event(s) found on %s", len(raw_events), topic.full(s.topic_prefix))
    if dry_run or not raw_events:
        return len(raw_events)
    if do_reset:
        client = make_client(s)
        try:
            for rid in sorted(wanted or set()):
                await reset(Store.from_client(client, s), rid)
        finally:
            await client.close()
    publisher = EventPublisher(s, client_id="imgpipe-replay")
    await publisher.start()
    try:
        replay_id = str(uuid.uuid4())
        events = [mark(decode(raw), replay_id) for raw in raw_events]
        for start in tqdm(range(0, len(events), 1000), desc="publishing", unit=" batches",
                          file=sys.stderr):
            await publisher.publish_many(events[start:start + 1000])
    finally:
        await publisher.stop()
    log.info("replayed %s event(s)", len(raw_events))
    return len(raw_events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay imgpipe events from Kafka.")
    parser.add_argument("--topic", required=True, choices=sorted(TOPICS))
    parser.add_argument("--request-id", action="append", dest="request_ids",
                        help="replay only this request (repeatable); default: every request")
    parser.add_argument("--reset", action="store_true",
                        help="clear the request's results first, so it is fully reprocessed")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="stop reading after this many seconds without new events")
    parser.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.reset and not args.request_ids:
        parser.error("--reset needs --request-id (it resets one request at a time)")
    settings = CommonSettings()
    asyncio.run(replay(settings, TOPICS[args.topic], args.request_ids, do_reset=args.reset,
                       idle=args.idle, dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
