"""Kafka clients: topic creation, an acknowledged event publisher, consumers.

Producers use ``acks="all"`` and never the idempotent/transactional mode:
correctness comes from idempotent consumers (every consumer sees
at-least-once delivery), not from broker-side exactly-once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.errors import TransientError
from shared.events import TOPIC_OF, _Event, event_key
from shared.settings import CommonSettings
from shared.topics import Topic, all_topics

log = logging.getLogger(__name__)


async def ensure_topics(settings: CommonSettings, names: Iterable[str] | None = None) -> None:
    """Create the project's topics if missing (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in (names or all_topics(settings.topic_prefix)) if n not in existing]
        for name in wanted:
            try:
                await admin.create_topics(
                    [NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=1)]
                )
                log.info("created topic %s", name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


class EventPublisher:
    """Publishes events and returns only once the broker acknowledged them."""

    def __init__(self, settings: CommonSettings, *, client_id: str) -> None:
        self._prefix = settings.topic_prefix
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=30_000,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def topic_for(self, event: _Event) -> str:
        return TOPIC_OF[type(event)].full(self._prefix)

    async def publish(self, event: _Event) -> None:
        await self.publish_many([event])

    async def publish_many(self, events: Sequence[_Event]) -> None:
        """Send all, then wait for every acknowledgement; TransientError on failure."""
        try:
            futures = [
                await self._producer.send(self.topic_for(e), e.encode(), key=event_key(e))
                for e in events
            ]
            if futures:
                await asyncio.gather(*futures)
        except KafkaError as exc:
            raise TransientError(f"Kafka did not acknowledge: {exc!r}", code="kafka_error") from exc

    async def dead_letter(self, raw: bytes | None, *, source: str, error: Exception) -> None:
        """Park a message that can never be processed, with the reason."""
        body: dict[str, Any] = {
            "source": source,
            "error": str(error),
            "value": (raw or b"").decode("utf-8", "replace")[:100_000],
        }
        await self._producer.send_and_wait(
            Topic.DEAD_LETTER.full(self._prefix), json.dumps(body).encode()
        )


def make_consumer(settings: CommonSettings, *, group_id: str, **kwargs: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits; subscribe it with ``run_consumer_service``."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kwargs,
    )
