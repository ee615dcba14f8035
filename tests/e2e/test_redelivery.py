"""Lost and duplicated events, end to end: an ``image.done`` consumed and
acknowledged without being handled is recovered by the reconciler, and a
request whose events are all published a second time finishes once, with its
counts unchanged, one ``request.completed`` and one webhook."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from pymongo import MongoClient

from shared.events import ImageDone, ImageRequested, RequestCompleted, decode
from shared.kafka import key_partitioner
from shared.requests import RELAY_PENDING
from shared.topics import Topic
from tests.conftest import HttpServer, Pipeline, running_pipeline
from tests.flows import (
    assert_complete_in_order,
    catalog,
    output_rows,
    read_topic,
    upload,
    wait_finished,
)
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack
IMAGES = 40
RECONCILE_ENV = {"IMGPIPE_RECONCILE_AFTER_SECONDS": "5",
                 "IMGPIPE_RECONCILE_INTERVAL_SECONDS": "1"}


@pytest.fixture
def quick_reconciler(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline of its own (topics, database) whose reconciler acts after 5 s."""
    tag = uuid.uuid4().hex[:8]
    env = {**stack_env, **RECONCILE_ENV, "IMGPIPE_TOPIC_PREFIX": f"r{tag}",
           "IMGPIPE_MONGO_DB": f"r{tag}"}
    with running_pipeline(env, tmp_path / "logs") as pipeline:
        yield pipeline


def serve_catalog(http_server: HttpServer, rows: int, delay: float = 0.0) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:8]
    http_server.prefixes[f"{tag}/"] = (encode(photo((64, 48)), "JPEG", quality=85),
                                       "image/jpeg")
    if delay:
        http_server.delays.update({f"{tag}/{i}.jpg": delay for i in range(1, rows + 1)})
    return catalog(http_server, tag, rows)


class RogueMember(threading.Thread):
    """Joins the aggregator's consumer group for ``image.done`` and acknowledges
    (commits) the first ``drop`` events it is given without handling them,
    then leaves the group. Runs its own event loop in a thread, so the test
    can upload while it is a member."""

    def __init__(self, env: dict[str, str], drop: int) -> None:
        super().__init__(daemon=True)
        self.env, self.at_least = env, drop
        self.joined = threading.Event()
        self.dropped: list[ImageDone] = []
        self.error: BaseException | None = None
        self.partitions: set[int] = set()  # of image.done, once joined
        self.partition_count = 0

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc
            self.joined.set()

    async def _run(self, within: float = 180) -> None:
        prefix = self.env["IMGPIPE_TOPIC_PREFIX"]
        consumer = AIOKafkaConsumer(
            Topic.IMAGE_DONE.full(prefix), bootstrap_servers=self.env["IMGPIPE_KAFKA_BOOTSTRAP"],
            group_id=f"{prefix}-aggregator",
            partition_assignment_strategy=(RangePartitionAssignor,),
            enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        deadline = time.monotonic() + within
        try:
            while not consumer.assignment():
                assert time.monotonic() < deadline, "the rogue was never given a partition"
                assert not await consumer.getmany(timeout_ms=200)  # polls: joins the group
            topic = Topic.IMAGE_DONE.full(prefix)
            self.partitions = {tp.partition for tp in consumer.assignment()}
            self.partition_count = len(consumer.partitions_for_topic(topic) or ())
            self.joined.set()
            while len(self.dropped) < self.at_least:
                assert time.monotonic() < deadline, f"dropped only {len(self.dropped)}"
                batches = await consumer.getmany(timeout_ms=300)
                for records in batches.values():
                    self.dropped += [ev for r in records
                                     if isinstance(ev := decode(r.value), ImageDone)]
                if batches:
                    await consumer.commit()  # acknowledged, never handled
        finally:
            await consumer.stop()  # leaves the group: the aggregator takes over


def test_an_image_done_acknowledged_but_never_handled_is_recovered_by_the_reconciler(
        quick_reconciler: Pipeline, http_server: HttpServer) -> None:
    pipeline = quick_reconciler
    body, urls = serve_catalog(http_server, IMAGES, delay=0.2)
    rogue = RogueMember(pipeline.env, drop=3)
    rogue.start()
    assert rogue.joined.wait(120) and rogue.error is None, rogue.error
    with pipeline.client(timeout=30) as client:
        # image.done is keyed by request id: upload until a request's events
        # land on a partition the rogue holds (the others finish normally).
        partitions = list(range(rogue.partition_count))
        for _ in range(16):
            accepted = upload(client, pipeline.ingest_url, body)
            rid = accepted["request_id"]
            if key_partitioner(rid.encode(), partitions, partitions) in rogue.partitions:
                break
            body, urls = serve_catalog(http_server, IMAGES, delay=0.2)
        else:
            raise AssertionError(f"no request landed on the rogue's {rogue.partitions}")
        rogue.join(180)
        assert not rogue.is_alive() and rogue.error is None, rogue.error
        dropped = {(e.row, e.position) for e in rogue.dropped}
        assert len(dropped) >= 3
        assert {e.request_id for e in rogue.dropped} == {accepted["request_id"]}

        status = wait_finished(client, accepted["status_url"], within=180)
        assert (status["status"], status["succeeded"], status["failed"]) == (
            "COMPLETED", IMAGES, 0), status
        assert_complete_in_order(output_rows(client, accepted["status_url"]), urls)
        doc = request_doc(pipeline, accepted["request_id"])
        # Exactly the dropped positions were re-driven, once.
        assert (doc.get("redrives"), doc.get("redriven")) == (1, len(dropped)), doc
        health = client.get(f"{pipeline.ingest_url}/health").json()
        assert health["relay"]["redriven"] == len(dropped), health


def request_doc(pipeline: Pipeline, request_id: str) -> dict[str, Any]:
    client: MongoClient[dict[str, Any]]
    with MongoClient(pipeline.env["IMGPIPE_MONGO_URI"]) as client:
        doc = client[pipeline.env["IMGPIPE_MONGO_DB"]].requests.find_one({"_id": request_id})
    assert doc is not None
    return dict(doc)


def events_of(pipeline: Pipeline, topic: Topic, request_id: str) -> list[Any]:
    values = asyncio.run(read_topic(pipeline.env["IMGPIPE_KAFKA_BOOTSTRAP"],
                                    topic.full(pipeline.env["IMGPIPE_TOPIC_PREFIX"])))
    return [e for e in map(decode, values) if getattr(e, "request_id", None) == request_id]


def test_every_event_of_a_finished_request_published_again_changes_nothing(
        pipeline: Pipeline, http_server: HttpServer) -> None:
    body, urls = serve_catalog(http_server, 12)
    with pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body, http_server.url("hook"))
        rid, status_url = accepted["request_id"], accepted["status_url"]
        wait_finished(client, status_url, within=120)
        wait_delivered(client, status_url)
        first = client.get(status_url).json()  # settled: finished, CSV stored, delivered
        before = output_rows(client, status_url)

        # The relay publishes the whole request again, as after a crash that
        # lost its cursor: request.created and every image event.
        mongo: MongoClient[dict[str, Any]]
        with MongoClient(pipeline.env["IMGPIPE_MONGO_URI"]) as mongo:
            mongo[pipeline.env["IMGPIPE_MONGO_DB"]].requests.update_one(
                {"_id": rid}, {"$set": {RELAY_PENDING: True, "relay": {
                    "page": 0, "skip": 0, "published": 0, "created_sent": False}}})
        deadline = time.monotonic() + 60
        while RELAY_PENDING in request_doc(pipeline, rid):
            assert time.monotonic() < deadline, "the relay did not publish it again"
            time.sleep(0.2)
        requested = events_of(pipeline, Topic.IMAGE_REQUESTED, rid)
        assert len([e for e in requested if isinstance(e, ImageRequested)]) == 2 * len(urls)
        deadline = time.monotonic() + 60  # every duplicate processed and counted
        while len(events_of(pipeline, Topic.IMAGE_DONE, rid)) < 2 * len(urls):
            assert time.monotonic() < deadline, "the duplicates were not processed"
            time.sleep(0.5)
        wait_lag_zero(client, pipeline)

        again = client.get(status_url).json()
        changed = {k: (first.get(k), v) for k, v in again.items() if first.get(k) != v}
        assert not changed, changed
        assert output_rows(client, status_url) == before
        assert_complete_in_order(before, urls)
        assert len([e for e in events_of(pipeline, Topic.REQUEST_COMPLETED, rid)
                    if isinstance(e, RequestCompleted)]) == 1
    hooks = [r for r in http_server.received
             if r["path"] == "/hook" and r["json"]["request_id"] == rid]
    assert len(hooks) == 1


def wait_delivered(client: httpx.Client, status_url: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while client.get(status_url).json()["webhook"]["status"] != "delivered":
        assert time.monotonic() < deadline, "the webhook was never delivered"
        time.sleep(0.3)


def wait_lag_zero(client: httpx.Client, pipeline: Pipeline, within: float = 60) -> None:
    """Until the aggregator has handled everything on its topics."""
    url = f"http://127.0.0.1:{pipeline.ports.aggregator}/health"
    deadline = time.monotonic() + within
    while True:
        health = client.get(url).json()
        if health.get("lag_total") == 0 and not health.get("in_flight"):
            return
        assert time.monotonic() < deadline, f"the aggregator still has work: {health}"
        time.sleep(0.3)
