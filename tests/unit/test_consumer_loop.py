"""ConsumerLoop behaviour with an in-memory consumer: no broker needed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.consumer import ConsumerLoop, _Tracker
from shared.errors import InvalidInputError, TransientError
from shared.retry import RetryPolicy

A, B = TopicPartition("t", 0), TopicPartition("t", 1)
FAST = RetryPolicy(base=0.001, cap=0.001, max_unexpected_attempts=4)  # no real waits


def record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"v%d" % offset, None,
                          0, 0, ())


class FakeConsumer:
    def __init__(self, records: dict[TopicPartition, list[int]]) -> None:
        self.queues = {tp: [record(tp, o) for o in offs] for tp, offs in records.items()}
        self._paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.polls = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.queues)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.polls += 1
        out: dict[TopicPartition, list[Any]] = {}
        for tp, queue in self.queues.items():
            while queue and tp not in self._paused and sum(map(len, out.values())) < max_records:
                out.setdefault(tp, []).append(queue.pop(0))
        if not out:
            await asyncio.sleep(0.005)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def committed(self, tp: TopicPartition) -> int | None:
        return next((c[tp] for c in reversed(self.commits) if tp in c), None)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Bounded polling: no bare sleeps, no unbounded waits."""
    for _ in range(int(within / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never met")


async def run_until(loop: ConsumerLoop, done: Callable[[], bool], within: float = 5.0) -> None:
    task = asyncio.create_task(loop.run())
    await eventually(done, within)
    loop.stop()
    await task


async def test_permanent_errors_are_parked_even_when_parking_fails_at_first() -> None:
    fake = FakeConsumer({A: [0, 1]})
    parked: list[int] = []
    failures = iter([ConnectionError("broker away"), ConnectionError("still away")])

    async def handler(rec: Any) -> None:
        if rec.offset == 0:
            raise InvalidInputError("bad event")

    async def dead_letter(rec: Any, exc: Exception) -> None:
        failure = next(failures, None)
        if failure:
            raise failure
        parked.append(rec.offset)

    loop = ConsumerLoop(fake, handler, dead_letter=dead_letter,
                        commit_interval=0, policy=FAST)
    await run_until(loop, lambda: fake.committed(A) == 2)
    assert parked == [0] and loop.dead_lettered == 1 and loop.handled == 2


async def test_a_bug_is_dead_lettered_after_a_few_attempts_but_an_outage_is_not() -> None:
    fake = FakeConsumer({A: [0], B: [0]})
    calls = {A: 0, B: 0}
    parked: list[str] = []

    async def handler(rec: Any) -> None:
        tp = TopicPartition(rec.topic, rec.partition)
        calls[tp] += 1
        if tp == A:
            raise KeyError("output_urls")  # a bug: capped
        raise TransientError("mongo away")  # an outage: retried, never parked

    async def dead_letter(rec: Any, exc: Exception) -> None:
        parked.append(repr(exc))

    loop = ConsumerLoop(fake, handler, dead_letter=dead_letter,
                        commit_interval=0, policy=FAST)
    await run_until(loop, lambda: fake.committed(A) == 1 and calls[B] > 20)
    assert calls[A] == FAST.max_unexpected_attempts
    assert parked == ["KeyError('output_urls')"]
    assert fake.committed(B) is None  # the retried message is not committed past


async def test_a_full_loop_pauses_and_keeps_polling() -> None:
    fake = FakeConsumer({A: list(range(6))})
    release = asyncio.Event()
    seen: list[int] = []

    async def handler(rec: Any) -> None:
        seen.append(rec.offset)
        await release.wait()

    loop = ConsumerLoop(fake, handler, dead_letter=None,  # type: ignore[arg-type]
                        max_in_flight=2, commit_interval=0, policy=FAST)
    task = asyncio.create_task(loop.run())
    await eventually(lambda: len(seen) == 2)
    polls = fake.polls
    await asyncio.sleep(0.1)
    assert fake.polls > polls + 3, "the loop must keep polling to stay in its group"
    assert fake.paused() == {A} and seen == [0, 1]
    release.set()
    await eventually(lambda: fake.committed(A) == 6)
    assert fake.paused() == set()
    loop.stop()
    await task


async def test_revoked_work_is_cancelled_after_the_grace_period_and_not_recorded() -> None:
    fake = FakeConsumer({A: [0, 1]})
    started = asyncio.Event()

    async def handler(rec: Any) -> None:
        if rec.offset == 1:
            started.set()
            await asyncio.sleep(3600)

    loop = ConsumerLoop(fake, handler, dead_letter=None,  # type: ignore[arg-type]
                        revoke_seconds=0.05, commit_interval=0, policy=FAST)
    task = asyncio.create_task(loop.run())
    await started.wait()
    await loop.revoke({A})
    assert fake.committed(A) == 1  # offset 0 done, 1 cancelled: the new owner redoes it
    assert loop.in_flight == 0
    loop.stop()
    await task


async def test_stop_during_a_retry_leaves_the_message_uncommitted() -> None:
    fake = FakeConsumer({A: [0]})

    async def handler(rec: Any) -> None:
        raise TransientError("down")

    loop = ConsumerLoop(fake, handler, dead_letter=None,  # type: ignore[arg-type]
                        commit_interval=0, policy=FAST)
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert fake.committed(A) is None and loop.handled == 0


def test_a_finish_from_before_a_revoke_is_ignored() -> None:
    t = _Tracker()
    old = t.start(A, 15)
    t.forget({A})  # revoked while 15 was running
    new = t.start(A, 8)
    t.finish(A, 8, new)
    t.finish(A, 15, old)  # the stale task finishes late
    assert t.committable() == {A: 9}


async def test_give_up_reports_before_parking_a_bug_but_not_a_bad_event() -> None:
    fake = FakeConsumer({A: [0, 1]})
    events: list[str] = []

    async def handler(rec: Any) -> None:
        if rec.offset == 0:
            raise InvalidInputError("undecodable")  # permanent: parked, not reported
        raise ZeroDivisionError("a bug")

    async def give_up(rec: Any, exc: Exception) -> None:
        events.append(f"give_up {rec.offset}")
        if events.count(f"give_up {rec.offset}") == 1:
            raise ConnectionError("broker away")  # retried, like the dead-letter

    async def dead_letter(rec: Any, exc: Exception) -> None:
        events.append(f"dead_letter {rec.offset}")

    loop = ConsumerLoop(fake, handler, dead_letter=dead_letter,
                        give_up=give_up, commit_interval=0, policy=FAST)
    await run_until(loop, lambda: fake.committed(A) == 2)
    assert events == ["dead_letter 0", "give_up 1", "give_up 1", "dead_letter 1"]


async def test_a_retry_after_is_waited_out_capped_by_the_policy() -> None:
    fake = FakeConsumer({A: [0]})
    calls: list[float] = []

    async def handler(rec: Any) -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise TransientError("lease held elsewhere", retry_after=100.0)

    loop = ConsumerLoop(fake, handler, dead_letter=None,  # type: ignore[arg-type]
                        commit_interval=0, policy=RetryPolicy(base=0.001, cap=0.2))
    await run_until(loop, lambda: fake.committed(A) == 1)
    assert 0.15 <= calls[1] - calls[0] < 3.0  # the cap, not 100 s, nor the 1 ms base
