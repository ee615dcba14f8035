"""Aggregator wiring: a Faust worker hosting the project's own consumer loop.

Faust runs the worker: its lifecycle and signals, the web server of
``/health``, and services started with the app. The inbound events
(``request.created``, ``image.done``) are *not* consumed by a Faust agent:
Faust's consumer can commit past a message that was never handled (its
``_new_offset`` accepts an acknowledged run that starts one offset above the
committed one, and a message dropped from a stream buffer during a rebalance
is then skipped for good; see docs/workers.md). They are consumed by
``shared.consumer.ConsumerLoop`` instead, which commits only below the lowest
offset still in flight, in the consumer group ``<topic_prefix>-aggregator``.

Both topics are keyed by request id through one partitioner and assigned with
the range assignor, so partition *i* of both goes to the same member; within a
member a request's events are handled one at a time (``KeyedLocks``), so a
recount can never race an increment of the same request, while other
requests go on concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
import mode
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import ConsumerRecord
from pymongo import AsyncMongoClient

from services.aggregator.handlers import (
    note_dead_letter,
    record_image_done,
    record_request_created,
)
from services.aggregator.settings import Settings
from shared.consumer import ConsumerLoop
from shared.errors import InvalidInputError
from shared.events import ImageDone, RequestCompleted, RequestCreated, decode
from shared.kafka import EventPublisher, make_consumer
from shared.mongo import Store, make_client, mongo_health
from shared.topics import Topic

log = logging.getLogger("aggregator")


class KeyedLocks:
    """One asyncio lock per key, dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Inbound:
    """The aggregator's clients and its consumer loop (built at start, not import)."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.client: AsyncMongoClient = make_client(s)
        self.store = Store.from_client(self.client, s)
        self.publisher = EventPublisher(s, client_id="imgpipe-aggregator")
        self.locks = KeyedLocks()
        self.consumer = make_consumer(
            s, group_id=s.app_id(), partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.aggregator_session_timeout * 1000),
            heartbeat_interval_ms=int(min(3.0, s.aggregator_session_timeout / 3) * 1000))
        self.loop = ConsumerLoop(self.consumer, self.handle, dead_letter=self.dead_letter,
                                 max_in_flight=s.aggregator_max_in_flight,
                                 drain_seconds=s.aggregator_drain_seconds)

    async def publish(self, ev: RequestCompleted) -> None:
        await self.publisher.publish(ev)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        event = decode(record.value)
        async with self.locks.hold(event.request_id):
            if isinstance(event, RequestCreated):
                await record_request_created(self.store, event, self.publish)
            elif isinstance(event, ImageDone):
                await record_image_done(self.store, event, self.publish)
            else:
                raise InvalidInputError(f"unexpected {event.event_type} event",
                                        code="unexpected_event")

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        await self.publisher.dead_letter(record.value, source=f"aggregator:{record.topic}",
                                         error=exc)
        with contextlib.suppress(InvalidInputError):
            event = decode(record.value)
            try:  # a note for people: never worth holding the partition for
                await note_dead_letter(self.store, event, exc)
            except Exception:
                log.exception("could not note the dead letter on request %s",
                              event.request_id)

    async def health(self) -> dict[str, Any]:
        mongo = "ok" if await mongo_health(self.store) else "unavailable"
        return {"ok": mongo == "ok", "service": "aggregator", "mongo": mongo,
                **await self.loop.describe()}


def create_app(s: Settings) -> faust.App:
    datadir = Path(s.aggregator_datadir.format(app_id=s.app_id()))
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        f"{s.app_id()}-worker", broker=f"kafka://{s.kafka_bootstrap}", store="memory://",
        autodiscover=False, web_enabled=True, web_port=s.aggregator_health_port,
        web_bind=s.aggregator_host, web_host=s.aggregator_host,
        topic_partitions=s.topic_partitions,
        topic_replication_factor=s.topic_replication_factor,
        producer_acks=-1, consumer_auto_offset_reset="earliest", datadir=str(datadir),
        broker_session_timeout=s.aggregator_session_timeout,
        broker_heartbeat_interval=min(3.0, s.aggregator_session_timeout / 3),
    )
    holder: dict[str, Inbound] = {}

    @app.service
    class InboundEvents(mode.Service):
        """Runs the consumer loop; on stop it drains, commits and closes."""

        _task: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            inbound = holder["inbound"] = Inbound(s)
            await inbound.publisher.start()
            inbound.consumer.subscribe(
                [Topic.REQUEST_CREATED.full(s.topic_prefix), Topic.IMAGE_DONE.full(s.topic_prefix)],
                listener=inbound.loop.rebalance_listener())
            await inbound.consumer.start()
            self._task = asyncio.create_task(inbound.loop.run())
            log.info("aggregator consuming as group %s", s.app_id())

        async def on_stop(self) -> None:
            inbound = holder.pop("inbound", None)
            if inbound is None:
                return
            inbound.loop.stop()
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            await inbound.consumer.stop()
            await inbound.publisher.stop()
            await inbound.client.close()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        inbound = holder.get("inbound")
        if inbound is None:
            return web.json({"ok": False, "service": "aggregator", "starting": True},
                            status=503)
        body = await inbound.health()
        return web.json(body, status=200 if body["ok"] else 503)

    return app
