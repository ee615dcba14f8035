"""An at-least-once Kafka consumer loop with bounded concurrency.

Messages are handled concurrently (up to ``max_in_flight``), so one slow item
(a retrying download, a webhook with backoff) never stalls its partition.
Offsets are committed only up to the lowest message still in flight on each
partition, so a crash re-delivers whatever was not finished; handlers are
therefore idempotent. Error handling follows ``shared.errors``:

- ``PermanentError`` (e.g. an undecodable event): dead-lettered, then committed;
- ``TransientError``: retried with backoff until it succeeds or we shut down;
- anything else: logged, treated as transient.

``stop()`` (wired to SIGTERM) stops fetching, drains in-flight work for up to
``drain_seconds``, commits and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.errors import PermanentError

log = logging.getLogger(__name__)

Handler = Callable[[ConsumerRecord[Any, Any]], Awaitable[None]]
DeadLetter = Callable[[ConsumerRecord[Any, Any], Exception], Awaitable[None]]


class _Tracker:
    """Per-partition offsets: which are in flight, what may be committed."""

    def __init__(self) -> None:
        self.in_flight: dict[TopicPartition, set[int]] = {}
        self.highest_done: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        self.in_flight.setdefault(tp, set()).add(offset)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        self.in_flight.get(tp, set()).discard(offset)
        self.highest_done[tp] = max(self.highest_done.get(tp, -1), offset)

    def committable(self) -> dict[TopicPartition, int]:
        out = {}
        for tp, done in self.highest_done.items():
            pending = self.in_flight.get(tp)
            out[tp] = min(pending) if pending else done + 1
        return out

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.in_flight.pop(tp, None)
            self.highest_done.pop(tp, None)


class ConsumerLoop:
    def __init__(self, consumer: AIOKafkaConsumer, handler: Handler, *,
                 dead_letter: DeadLetter, max_in_flight: int = 32,
                 drain_seconds: float = 30.0, commit_interval: float = 1.0) -> None:
        self.consumer = consumer
        self.handler = handler
        self.dead_letter = dead_letter
        self.max_in_flight = max_in_flight
        self.drain_seconds = drain_seconds
        self.commit_interval = commit_interval
        self._tracker = _Tracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        self.handled = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        self._stopping.set()

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        loop = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await loop.commit()
                loop._tracker.forget(set(revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                return None

        return _Listener()

    async def run(self) -> None:
        last_commit = asyncio.get_running_loop().time()
        try:
            while not self._stopping.is_set():
                room = self.max_in_flight - len(self._tasks)
                if room <= 0:
                    await asyncio.wait(self._tasks, timeout=0.5,
                                       return_when=asyncio.FIRST_COMPLETED)
                else:
                    batches = await self.consumer.getmany(timeout_ms=300, max_records=room)
                    for tp, records in batches.items():
                        for record in records:
                            self._spawn(tp, record)
                now = asyncio.get_running_loop().time()
                if now - last_commit >= self.commit_interval:
                    await self.commit()
                    last_commit = now
        finally:
            await self._drain()

    def _spawn(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        self._tracker.start(tp, record.offset)
        task = asyncio.create_task(self._handle(tp, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        attempt = 0
        while True:
            try:
                await self.handler(record)
                break
            except PermanentError as exc:
                log.warning("dead-lettering %s[%s]@%s: %s", tp.topic, tp.partition,
                            record.offset, exc)
                await self.dead_letter(record, exc)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # transient or unknown: retry, never drop
                attempt += 1
                delay = min(30.0, 0.5 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0)
                log.warning("retrying %s[%s]@%s in %.1fs after %r", tp.topic, tp.partition,
                            record.offset, delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                if self._stopping.is_set():
                    return  # not committed: redelivered after restart
        self._tracker.finish(tp, record.offset)
        self.handled += 1

    async def commit(self) -> None:
        offsets = self._tracker.committable()
        assigned = self.consumer.assignment()
        todo = {tp: off for tp, off in offsets.items()
                if tp in assigned and self._committed.get(tp) != off}
        if not todo:
            return
        try:
            await self.consumer.commit(todo)
            self._committed.update(todo)
        except Exception as exc:  # a rebalance in progress: the next commit catches up
            log.warning("commit failed (will retry): %r", exc)

    async def _drain(self) -> None:
        if self._tasks:
            log.info("draining %s in-flight message(s)", len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        await self.commit()
