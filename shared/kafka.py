"""Kafka clients: topic creation, an acknowledged event publisher, consumers.

Producers use ``acks="all"`` and, on Apache Kafka, the idempotent mode
(``IMGPIPE_KAFKA_IDEMPOTENCE``; Tansu has no idempotent producer, so its local
stack turns it off): a producer's own retries then never duplicate or reorder
a partition's messages. Correctness still comes from idempotent consumers
(every consumer sees at-least-once delivery: a crash between a handler's
effects and its commit redelivers), never from broker-side exactly-once, so
both brokers stay correct.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.errors import TransientError
from shared.events import TOPIC_OF, _Event, event_key
from shared.redact import redact
from shared.settings import CommonSettings
from shared.topics import Topic

log = logging.getLogger(__name__)


def topic_configs(settings: CommonSettings, topic: Topic) -> dict[str, str]:
    """The explicit configs every imgpipe topic is created with (docs/deploy.md):
    time-based retention long enough to replay from, and the durability floor
    (``min.insync.replicas``; 2 with replication factor 3 in production)."""
    hours = (settings.dead_letter_retention_hours if topic is Topic.DEAD_LETTER
             else settings.topic_retention_hours)
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(int(hours * 3600 * 1000)),
        "min.insync.replicas": str(settings.topic_min_insync_replicas),
    }


async def ensure_topics(settings: CommonSettings, topics: Iterable[Topic] | None = None) -> None:
    """Create the project's topics if missing (idempotent), with explicit
    partitions, replication factor and configs. An existing topic is left as
    it is (a smaller partition count than configured is logged: adding
    partitions would move keys, so it is an operator's decision)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        wanted = {t.full(settings.topic_prefix): t for t in (topics or list(Topic))}
        # Listed first, described only if present: a metadata request naming a
        # missing topic creates it on brokers that auto-create (Tansu does).
        present = [n for n in await admin.list_topics() if n in wanted]
        existing = {t["topic"]: len(t["partitions"])
                    for t in (await admin.describe_topics(present) if present else [])
                    if t["error_code"] == 0}
        for name, topic in wanted.items():
            if name in existing:
                if existing[name] < settings.topic_partitions:
                    log.warning("topic %s has %s partitions, fewer than the %s configured "
                                "(IMGPIPE_TOPIC_PARTITIONS): at most %s consumers of it work",
                                name, existing[name], settings.topic_partitions, existing[name])
                continue
            try:
                await admin.create_topics([NewTopic(
                    name, num_partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication_factor,
                    topic_configs=topic_configs(settings, topic))])
                log.info("created topic %s", name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def topic_partitions(settings: CommonSettings, name: str) -> list[int]:
    """The partition ids of a topic, from a fresh metadata request ([] if it
    does not exist; never created by asking)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            return []
        [found] = await admin.describe_topics([name])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in found["partitions"]) if found["error_code"] == 0 else []


def key_partitioner(key: bytes | None, all_partitions: list[int],
                    available: list[int]) -> int:
    """CRC32 of the key: deterministic like the default murmur2 partitioner
    but computed in C (aiokafka's murmur2 is pure Python and showed up as a
    fifth of the upload time for large files). Every producer of a topic must
    use the same function so one key maps to one partition: all producers of
    image.requested and image.done go through EventPublisher."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[zlib.crc32(key) % len(all_partitions)]


class EventPublisher:
    """Publishes events and returns only once the broker acknowledged them."""

    def __init__(self, settings: CommonSettings, *, client_id: str) -> None:
        self._prefix = settings.topic_prefix
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=settings.kafka_idempotence,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=30_000,
            partitioner=key_partitioner,
        )
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, event: _Event) -> None:
        await self.publish_many([event])

    async def publish_many(self, events: Sequence[_Event]) -> None:
        """Send all, then wait for every acknowledgement; TransientError on failure."""
        by_topic: dict[Topic, list[tuple[bytes, bytes]]] = {}
        for e in events:
            by_topic.setdefault(TOPIC_OF[type(e)], []).append((event_key(e), e.encode()))
        for topic, messages in by_topic.items():
            await self.publish_encoded(topic, messages)

    async def publish_encoded(self, topic: Topic, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish already-encoded (key, value) pairs in per-partition batches
        (far less per-message overhead than ``send``), then wait for the acks."""
        name = topic.full(self._prefix)
        try:
            partitions = sorted(await self._producer.partitions_for(name))
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            for key, value in messages:
                by_partition.setdefault(key_partitioner(key, partitions, partitions), []).append(
                    (key, value))
            futures = []
            for partition, items in by_partition.items():
                # One sender at a time per partition: aiokafka's add_batch waits
                # for the partition's queued batch to drain and counts its
                # timeout down wrongly (the whole elapsed time, again on every
                # wake-up), so callers racing for one partition time out early.
                async with self._locks.setdefault((name, partition), asyncio.Lock()):
                    futures += await self._enqueue(name, partition, items)
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise TransientError(f"Kafka did not acknowledge: {exc!r}", code="kafka_error") from exc

    async def _enqueue(self, name: str, partition: int, items: list[tuple[bytes, bytes]]
                       ) -> list[asyncio.Future[Any]]:
        """Queue ``items`` in as few batches as fit; the futures of their acks."""
        futures = []
        batch = self._producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await self._producer.send_batch(batch, name, partition=partition))
                batch = self._producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"one message of {len(value)} bytes is larger "
                                     "than a whole batch")
        futures.append(await self._producer.send_batch(batch, name, partition=partition))
        return futures

    async def dead_letter(self, raw: bytes | None, *, source: str, error: Exception) -> None:
        """Park a message that can never be processed, with the reason."""
        await self._producer.send_and_wait(
            Topic.DEAD_LETTER.full(self._prefix), dead_letter_body(raw, source, error)
        )


def dead_letter_body(raw: bytes | None, source: str, error: Exception | str) -> bytes:
    """The dead-letter envelope every service sends: JSON ``{source, error, value}``
    with the raw value decoded as UTF-8 (invalid bytes replaced), capped at 100k chars."""
    body: dict[str, Any] = {
        "source": source,
        "error": redact(str(error)),  # the value stays as it was, to be replayed
        "value": (raw or b"").decode("utf-8", "replace")[:100_000],
    }
    return json.dumps(body).encode()


def make_consumer(settings: CommonSettings, *, group_id: str, **kwargs: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits; subscribe it with ``run_consumer_service``."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kwargs,
    )
