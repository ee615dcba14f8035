"""One broker contract, run against each broker (Apache Kafka and Tansu).

What imgpipe relies on from its Kafka API: keyed produce and ordered consume,
a group that rebalances when a member dies, commit and resume, no offset
committed past an unhandled message (``shared.consumer.ConsumerLoop``), and
replay by offset. Every test uses topics and groups of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.consumer import ConsumerLoop
from shared.events import ImageDone, decode_as
from shared.kafka import EventPublisher, ensure_topics, key_partitioner, topic_partitions
from shared.settings import CommonSettings
from shared.topics import Topic
from tests.conftest import Broker

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3


def event(rid: str, serial: int) -> ImageDone:
    return ImageDone(request_id=rid, image_id=rid, serial=serial, position=0,
                     url=f"http://example.com/{serial}", status="succeeded")


@pytest.fixture
async def world(broker: Broker) -> AsyncIterator[tuple[CommonSettings, EventPublisher]]:
    settings = CommonSettings(kafka_bootstrap=broker.bootstrap,
                              topic_prefix=f"c{uuid.uuid4().hex[:8]}",
                              topic_partitions=PARTITIONS,
                              kafka_idempotence=broker.idempotence)
    await ensure_topics(settings, [Topic.IMAGE_DONE])
    publisher = EventPublisher(settings, client_id="contract")
    await publisher.start()
    try:
        yield settings, publisher
    finally:
        await publisher.stop()


def group_consumer(s: CommonSettings, group: str, **kwargs: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(Topic.IMAGE_DONE.full(s.topic_prefix),
                            bootstrap_servers=s.kafka_bootstrap, group_id=group,
                            enable_auto_commit=False, auto_offset_reset="earliest", **kwargs)


async def drain(consumer: AIOKafkaConsumer, want: int, within: float = 60.0
                ) -> list[ConsumerRecord[bytes, bytes]]:
    got: list[ConsumerRecord[bytes, bytes]] = []
    async with asyncio.timeout(within):
        while len(got) < want:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got += records
    return got


async def test_keyed_messages_come_back_in_order_per_key(
        world: tuple[CommonSettings, EventPublisher]) -> None:
    s, publisher = world
    rids = [str(uuid.uuid4()) for _ in range(5)]
    await publisher.publish_many([event(rid, n) for n in range(1, 41) for rid in rids])
    consumer = group_consumer(s, f"g{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        records = await drain(consumer, 200)
    finally:
        await consumer.stop()
    by_key: dict[str, list[int]] = {}
    partition_of: dict[str, set[int]] = {}
    for r in records:
        ev = decode_as(r.value, ImageDone)
        by_key.setdefault(ev.request_id, []).append(ev.serial)
        partition_of.setdefault(ev.request_id, set()).add(r.partition)
    assert by_key == {rid: list(range(1, 41)) for rid in rids}
    assert all(len(p) == 1 for p in partition_of.values())  # one key, one partition


async def test_commit_and_resume_exactly_where_committed(
        world: tuple[CommonSettings, EventPublisher]) -> None:
    s, publisher = world
    rid, group = str(uuid.uuid4()), f"g{uuid.uuid4().hex[:8]}"  # one key: one partition
    await publisher.publish_many([event(rid, n) for n in range(1, 21)])
    first = group_consumer(s, group)
    await first.start()
    try:
        records = (await drain(first, 20))[:8]
        tp = TopicPartition(records[0].topic, records[0].partition)
        await first.commit({tp: records[-1].offset + 1})
    finally:
        await first.stop()
    second = group_consumer(s, group)
    await second.start()
    try:
        rest = await drain(second, 12)
    finally:
        await second.stop()
    assert [decode_as(r.value, ImageDone).serial for r in rest] == list(range(9, 21))


MEMBER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
async def main():
    c = AIOKafkaConsumer(sys.argv[1], bootstrap_servers=sys.argv[2], group_id=sys.argv[3],
                         enable_auto_commit=False, session_timeout_ms=6000,
                         heartbeat_interval_ms=1000)
    await c.start()
    while True:
        await c.getmany(timeout_ms=500)
        if c.assignment():
            print("assigned", flush=True)
asyncio.run(main())
"""


async def test_a_dead_members_partitions_move_to_the_survivor(
        world: tuple[CommonSettings, EventPublisher]) -> None:
    s, _ = world
    topic, group = Topic.IMAGE_DONE.full(s.topic_prefix), f"g{uuid.uuid4().hex[:8]}"
    survivor = group_consumer(s, group, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await survivor.start()
    member = subprocess.Popen(  # noqa: ASYNC220 - started once, never waited on here
        [sys.executable, "-c", MEMBER, topic, s.kafka_bootstrap, group], cwd=ROOT,
        stdout=subprocess.PIPE, env={**os.environ}, start_new_session=True)
    try:
        async def assignment_until(ok: Any, what: str, within: float = 60) -> None:
            deadline = time.monotonic() + within
            while not ok(len(survivor.assignment())):
                assert time.monotonic() < deadline, (
                    f"survivor has {len(survivor.assignment())} partitions: not {what}")
                await survivor.getmany(timeout_ms=300)

        await assignment_until(lambda n: n == PARTITIONS, "all (alone)")
        assert member.stdout is not None
        await asyncio.wait_for(asyncio.to_thread(member.stdout.readline), 60)  # joined
        await assignment_until(lambda n: 0 < n < PARTITIONS, "shared with the member")
        os.killpg(member.pid, signal.SIGKILL)  # dies without leaving the group
        await assignment_until(lambda n: n == PARTITIONS, "all again (member dead)")
    finally:
        if member.poll() is None:
            os.killpg(member.pid, signal.SIGKILL)
        member.wait()
        await survivor.stop()


async def test_no_offset_is_committed_past_an_unhandled_message(
        world: tuple[CommonSettings, EventPublisher]) -> None:
    s, publisher = world
    rid, group = str(uuid.uuid4()), f"g{uuid.uuid4().hex[:8]}"
    await publisher.publish_many([event(rid, n) for n in range(1, 31)])
    release, handled, offsets = asyncio.Event(), set[int](), dict[int, int]()

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        serial = decode_as(record.value, ImageDone).serial
        offsets[serial] = record.offset
        if serial == 10:
            await release.wait()  # the one message still being worked on
        handled.add(serial)

    async def no_dead_letters(record: ConsumerRecord[Any, Any], exc: Exception) -> None:
        raise AssertionError(f"dead-lettered: {exc!r}")

    consumer = group_consumer(s, group)
    loop = ConsumerLoop(consumer, handler, dead_letter=no_dead_letters, commit_interval=0.1)
    consumer.subscribe([Topic.IMAGE_DONE.full(s.topic_prefix)],
                       listener=loop.rebalance_listener())
    await consumer.start()
    task = asyncio.create_task(loop.run())
    # Reads the group's committed offsets without joining it (no subscription).
    probe = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=group,
                             enable_auto_commit=False)
    await probe.start()
    try:
        async with asyncio.timeout(60):
            while len(handled) < 29:  # noqa: ASYNC110 - bounded polling
                await asyncio.sleep(0.1)
        [partition] = await key_partition(s, rid)
        tp = TopicPartition(Topic.IMAGE_DONE.full(s.topic_prefix), partition)
        await asyncio.sleep(0.5)  # several commit intervals
        assert 10 not in handled
        assert (await probe.committed(tp) or 0) <= offsets[10]  # never past the held one
        release.set()
        async with asyncio.timeout(30):
            while (await probe.committed(tp) or 0) <= max(offsets.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        release.set()
        loop.stop()
        await task
        await consumer.stop()
        await probe.stop()


async def key_partition(s: CommonSettings, rid: str) -> set[int]:
    partitions = await topic_partitions(s, Topic.IMAGE_DONE.full(s.topic_prefix))
    return {key_partitioner(rid.encode(), partitions, partitions)}


async def test_replay_reads_again_from_any_offset(
        world: tuple[CommonSettings, EventPublisher]) -> None:
    s, publisher = world
    rid = str(uuid.uuid4())
    await publisher.publish_many([event(rid, n) for n in range(1, 11)])
    name = Topic.IMAGE_DONE.full(s.topic_prefix)
    reader = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None,
                              enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(name, p) for p in await topic_partitions(s, name)]
        assert len(tps) == PARTITIONS
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        everything = await drain(reader, 10)
        fifth = everything[4]
        reader.seek(TopicPartition(name, fifth.partition), fifth.offset)
        again = await drain(reader, 6)
    finally:
        await reader.stop()
    assert [decode_as(r.value, ImageDone).serial for r in again] == list(range(5, 11))
