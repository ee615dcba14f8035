"""An at-least-once Kafka consumer loop with bounded concurrency.

Messages are handled concurrently (up to ``max_in_flight``), so one slow item
(a retrying download, a webhook with backoff) never stalls its partition.
Offsets are committed only up to the lowest message still in flight on each
partition, so a crash re-delivers whatever was not finished; handlers are
therefore idempotent. Errors are handled by a ``shared.retry.RetryPolicy``
(``DEFAULT_POLICY`` unless given):

- ``PermanentError`` (e.g. an undecodable event): dead-lettered, then committed;
- transient errors (``TransientError``, network, MongoDB, Kafka, S3): retried
  with backoff (an error's ``retry_after`` honoured) until they succeed or we
  shut down;
- anything else (a bug, unexpected data): retried ``max_unexpected_attempts``
  times in all, then reported (``give_up``) and dead-lettered with the error,
  so it cannot stall its partition.
A failing dead-letter publish is itself retried with backoff: nothing is
committed past a message that was neither handled nor parked.

When every slot is busy the loop pauses its partitions and keeps polling, so
the consumer stays in its group. On a rebalance, the work of revoked
partitions gets ``revoke_seconds`` to finish (then it is cancelled and left to
the new owner), and is committed. ``stop()`` (wired to SIGTERM) stops fetching,
drains in-flight work for up to ``drain_seconds``, commits and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.retry import DEFAULT_POLICY, GiveUp, RetryPolicy, retry_after_of

log = logging.getLogger(__name__)

Handler = Callable[[ConsumerRecord[Any, Any]], Awaitable[None]]
DeadLetter = Callable[[ConsumerRecord[Any, Any], Exception], Awaitable[None]]


class _Tracker:
    """Per-partition offsets: which are in flight, what may be committed.

    Each assignment of a partition has an epoch; a task started under an
    earlier assignment cannot record anything after the partition was revoked.
    """

    def __init__(self) -> None:
        self.in_flight: dict[TopicPartition, set[int]] = {}
        self.highest_done: dict[TopicPartition, int] = {}
        self.epochs: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> int:
        self.in_flight.setdefault(tp, set()).add(offset)
        return self.epochs.get(tp, 0)

    def finish(self, tp: TopicPartition, offset: int, epoch: int = 0) -> None:
        if epoch != self.epochs.get(tp, 0):
            return  # started before a revoke: the partition's new life ignores it
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
            self.epochs[tp] = self.epochs.get(tp, 0) + 1


class ConsumerLoop:
    def __init__(self, consumer: AIOKafkaConsumer, handler: Handler, *,
                 dead_letter: DeadLetter, give_up: DeadLetter | None = None,
                 max_in_flight: int = 32,
                 drain_seconds: float = 30.0, revoke_seconds: float = 15.0,
                 commit_interval: float = 1.0, policy: RetryPolicy = DEFAULT_POLICY) -> None:
        self.consumer = consumer
        self.handler = handler
        self.dead_letter = dead_letter
        # Called once before a message is dead-lettered for an *unexpected*
        # error (not a PermanentError), e.g. to report the item as failed so
        # the work it belonged to can still finish.
        self.give_up = give_up
        self.max_in_flight = max_in_flight
        self.drain_seconds = drain_seconds
        self.revoke_seconds = revoke_seconds
        self.commit_interval = commit_interval
        self.policy = policy
        self._tracker = _Tracker()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._stopping = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        self.handled = 0
        self.dead_lettered = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def describe(self) -> dict[str, Any]:
        """For ``/health``: assigned partitions, work in flight, and the lag of
        each partition: the broker's end offset minus what this consumer has
        committed (the group's committed offset until it commits itself)."""
        assigned = sorted(self.consumer.assignment())
        lag: dict[str, int] = {}
        if assigned:
            try:
                ends = await self.consumer.end_offsets(assigned)
                for tp in assigned:
                    done = self._committed.get(tp)
                    if done is None:
                        done = await self.consumer.committed(tp) or 0
                    lag[f"{tp.topic}[{tp.partition}]"] = max(0, ends[tp] - done)
            except Exception as exc:  # the broker is away: health still answers
                log.warning("health: consumer lag unavailable: %r", exc)
        return {"assigned": [f"{tp.topic}[{tp.partition}]" for tp in assigned],
                "in_flight": self.in_flight, "handled": self.handled,
                "dead_lettered": self.dead_lettered, "lag": lag,
                "lag_total": sum(lag.values())}

    def stop(self) -> None:
        self._stopping.set()

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        loop = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await loop.revoke(set(revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                return None

        return _Listener()

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Let the revoked partitions' work finish (bounded), commit, forget them."""
        tasks = [t for t, tp in self._tasks.items() if tp in revoked]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.revoke_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.commit()
        self._tracker.forget(revoked)
        for tp in revoked:
            self._committed.pop(tp, None)

    async def run(self) -> None:
        last_commit = asyncio.get_running_loop().time()
        try:
            while not self._stopping.is_set():
                room = self.max_in_flight - len(self._tasks)
                assigned = self.consumer.assignment()
                if room <= 0:  # keep polling (group membership) but fetch nothing
                    self.consumer.pause(*assigned)
                elif self.consumer.paused():
                    self.consumer.resume(*self.consumer.paused())
                batches = await self.consumer.getmany(timeout_ms=300, max_records=max(room, 1))
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
        epoch = self._tracker.start(tp, record.offset)
        task = asyncio.create_task(self._handle(tp, record, epoch))
        self._tasks[task] = tp
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("consumer task failed: %r", task.exception())

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[Any, Any],
                      epoch: int) -> None:
        where = f"{tp.topic}[{tp.partition}]@{record.offset}"
        attempt = 0
        park: Exception | None = None  # set once the message is to be dead-lettered
        report = False  # give_up still to be called before parking
        while True:
            try:
                if park is None:
                    await self.handler(record)
                else:
                    if report and self.give_up is not None:
                        await self.give_up(record, park)
                    report = False
                    await self.dead_letter(record, park)
                    self.dead_lettered += 1
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            attempt += 1
            if park is not None:  # parking failed: retried until it works
                delay = self.policy.delay(attempt, retry_after_of(error))
            else:
                decision = self.policy.decide(error, attempt)
                if isinstance(decision, GiveUp):
                    if decision.permanent:
                        log.warning("dead-lettering %s: %s", where, error)
                    else:
                        log.error("dead-lettering %s after %s attempts: %r", where, attempt,
                                  error)
                    park, attempt, report = error, 0, not decision.permanent
                    continue
                delay = decision.delay
            log.warning("retrying %s in %.1fs after %r", where, delay, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return  # not committed: redelivered after restart
        self._tracker.finish(tp, record.offset, epoch)
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
            _, pending = await asyncio.wait(list(self._tasks), timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        await self.commit()
