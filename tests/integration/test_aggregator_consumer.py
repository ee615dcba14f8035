"""The aggregator's consumer, run as the real service.

- A request whose event cannot be handled yet holds back only itself: the
  other requests on its partition go on, and the group's committed offset
  never passes the unhandled event (a Faust agent held the whole partition).
- Nothing is lost while the group rebalances under load: a second member
  joins and dies (SIGKILL) or leaves (SIGTERM), again and again, and every
  request still finishes with exact counts.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.procs import free_port
from deploy.services import health
from shared.events import ImageDone, RequestCreated
from shared.kafka import EventPublisher, ensure_topics, key_partitioner
from shared.mongo import Store, db_now, make_client, position_id
from shared.requests import new_request_doc
from shared.settings import CommonSettings
from shared.topics import Topic

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]
REQUESTS, IMAGES = 12, 1200


class Aggregator:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.aggregator"], cwd=ROOT,
            env={**os.environ, **env, "IMGPIPE_AGGREGATOR_HEALTH_PORT": str(self.port),
                 "PYTHONUNBUFFERED": "1"},
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def assigned(self) -> list[str]:
        body = health(f"http://127.0.0.1:{self.port}/health") or {}
        return list(body.get("assigned") or [])  # type: ignore[call-overload]

    async def wait_assigned(self, within: float = 120.0) -> None:
        deadline = time.monotonic() + within
        while not self.assigned():
            assert self.proc.poll() is None, "the aggregator exited"
            assert time.monotonic() < deadline, "the aggregator never got partitions"
            await asyncio.sleep(0.3)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
async def world(stack_env: dict[str, str], tmp_path: Path
                ) -> AsyncIterator[tuple[dict[str, str], Store, EventPublisher]]:
    tag = uuid.uuid4().hex[:8]
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": f"rb{tag}", "IMGPIPE_MONGO_DB": f"rb{tag}",
           "IMGPIPE_TOPIC_PARTITIONS": "6",
           "IMGPIPE_AGGREGATOR_DATADIR": str(tmp_path / "faust-{app_id}"),
           # A member that dies is noticed within seconds, not Faust's default minute.
           "IMGPIPE_AGGREGATOR_SESSION_TIMEOUT": "6"}
    fields: dict[str, Any] = {k.removeprefix("IMGPIPE_").lower(): v for k, v in env.items()
                              if k.startswith("IMGPIPE_")}
    settings = CommonSettings(**fields)
    await ensure_topics(settings)
    client = make_client(settings)
    publisher = EventPublisher(settings, client_id="test")
    await publisher.start()
    try:
        yield env, Store.from_client(client, settings), publisher
    finally:
        await publisher.stop()
        await client.drop_database(settings.mongo_db)
        await client.close()


def done(rid: str, serial: int) -> ImageDone:
    return ImageDone(request_id=rid, image_id=str(uuid.uuid4()), serial=serial, position=0,
                     url=f"http://example.com/{serial}.jpg", status="succeeded",
                     output_url=f"http://s3/{rid}/{serial}.jpg")


def partition_of(rid: str, partitions: int) -> int:
    return key_partitioner(rid.encode(), list(range(partitions)), [])


async def offset_of(env: dict[str, str], topic: str, event_id: str) -> tuple[int, int]:
    """(partition, offset) of one event, read back from the topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=env["IMGPIPE_KAFKA_BOOTSTRAP"],
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    for r in records:
                        if event_id.encode() in (r.value or b""):
                            return tp.partition, r.offset
    finally:
        await consumer.stop()


async def committed(env: dict[str, str], topic: str, partition: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=env["IMGPIPE_KAFKA_BOOTSTRAP"],
                                group_id=f"{env['IMGPIPE_TOPIC_PREFIX']}-aggregator",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition)) or 0
    finally:
        await consumer.stop()


async def status_of(store: Store, rid: str) -> tuple[str, int, bool]:
    doc = await store.requests.find_one({"_id": rid}) or {}
    return doc.get("status", "-"), doc.get("succeeded", 0), bool(doc.get("completion_published"))


async def test_a_held_request_holds_back_only_itself_and_its_offset(
        world: tuple[dict[str, str], Store, EventPublisher], tmp_path: Path) -> None:
    env, store, publisher = world
    partitions = int(env["IMGPIPE_TOPIC_PARTITIONS"])
    held = str(uuid.uuid4())
    other = next(r for r in (str(uuid.uuid4()) for _ in range(1000))
                 if partition_of(r, partitions) == partition_of(held, partitions))
    # `held` finished, but another consumer holds its publication lease (it
    # crashed mid-publish): until the lease runs out, its event is retried.
    lease = 20.0
    now = await db_now(store)
    await store.requests.insert_one(new_request_doc(
        held, product_count=1, image_count=1, webhook_url=None, created_at=now, filename=None,
        ) | {"status": "COMPLETED", "succeeded": 1, "completed_at": now,
                          "publish_lease_until": now + timedelta(seconds=lease)})
    stuck = done(held, 1)
    await store.images.insert_one({"_id": position_id(held, 1, 0), "request_id": held,
                                   "serial": 1, "position": 0, "status": "succeeded",
                                   "counted": True})
    agg = Aggregator(env, tmp_path / "aggregator.log")
    try:
        await agg.wait_assigned()
        await publisher.publish(stuck)
        await publisher.publish(RequestCreated(request_id=other, product_count=3, image_count=3,
                                               created_at=now))
        await publisher.publish_many([done(other, serial) for serial in (1, 2, 3)])
        topic = Topic.IMAGE_DONE.full(env["IMGPIPE_TOPIC_PREFIX"])
        partition, offset = await offset_of(env, topic, stuck.event_id)

        deadline = time.monotonic() + lease * 0.6
        while (await status_of(store, other))[2] is False:  # published
            assert time.monotonic() < deadline, (
                "a request behind a held one on its partition did not finish: "
                f"{await status_of(store, other)}")
            await asyncio.sleep(0.3)
        assert await status_of(store, held) == ("COMPLETED", 1, False)
        await asyncio.sleep(2.0)  # two commit intervals
        assert await committed(env, topic, partition) <= offset  # never past the held event

        deadline = time.monotonic() + lease + 60
        while not (await status_of(store, held))[2]:  # the lease ran out: it is published
            assert time.monotonic() < deadline, "the held request was never published"
            await asyncio.sleep(0.5)
        while await committed(env, topic, partition) <= offset:
            assert time.monotonic() < deadline, "the offset never moved past the held event"
            await asyncio.sleep(0.5)
    finally:
        agg.stop()


@pytest.mark.slow
async def test_rebalances_under_load_skip_no_event(
        world: tuple[dict[str, str], Store, EventPublisher], tmp_path: Path) -> None:
    env, store, publisher = world
    rids = [str(uuid.uuid4()) for _ in range(REQUESTS)]
    now = datetime.now(UTC)
    await publisher.publish_many([RequestCreated(
        request_id=rid, product_count=IMAGES, image_count=IMAGES, created_at=now)
        for rid in rids])
    main = Aggregator(env, tmp_path / "aggregator-main.log")
    try:
        await main.wait_assigned()
        # The burst, in slices, with a second member joining and dying meanwhile.
        for round_no, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGKILL)):
            events = [done(rid, serial) for rid in rids
                      for serial in range(round_no * IMAGES // 3 + 1,
                                          (round_no + 1) * IMAGES // 3 + 1)]
            await publisher.publish_many(events)
            extra = Aggregator(env, tmp_path / f"aggregator-extra-{round_no}.log")
            try:
                await extra.wait_assigned()
            finally:
                extra.stop(sig)
        rest = [done(rid, serial) for rid in rids for serial in range(IMAGES // 3 * 3 + 1,
                                                                        IMAGES + 1)]
        await publisher.publish_many(rest)

        deadline = time.monotonic() + 300
        while True:
            docs = [d async for d in store.requests.find({"_id": {"$in": rids}})]
            finished = [d for d in docs if d["status"] == "COMPLETED"]
            if len(finished) == REQUESTS or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        counts = {d["_id"]: (d["status"], d["succeeded"], d["failed"]) for d in docs}
        assert counts == {rid: ("COMPLETED", IMAGES, 0) for rid in rids}, {
            rid: c for rid, c in counts.items() if c != ("COMPLETED", IMAGES, 0)}
        assert await store.images.count_documents({"request_id": {"$in": rids}}) == (
            REQUESTS * IMAGES)
    finally:
        main.stop()
