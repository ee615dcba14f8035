"""SIGTERM: the processor finishes what it started, commits, and exits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from deploy.procs import free_port
from shared.events import ImageDone, ImageRequested, decode_as
from shared.kafka import EventPublisher, ensure_topics
from shared.settings import CommonSettings
from shared.topics import Topic
from tests.conftest import HttpServer
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]


def start_processor(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.processor"], cwd=ROOT,
        env={**os.environ, **env, "IMGPIPE_PROCESSOR_HEALTH_PORT": str(port)},
        stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return proc, port


def health(port: int) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return {}


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Harness:
    """One processor's world on a single-partition topic set of its own."""

    env: dict[str, str]
    publisher: EventPublisher
    seen: list[ImageDone] = field(default_factory=list)

    def request(self, rid: str, serial: int, url: str) -> ImageRequested:
        return ImageRequested(request_id=rid, image_id=str(uuid.uuid4()), serial=serial,
                              product_name="P", position=0, url=url)


@pytest.fixture
async def harness(stack_env: dict[str, str]) -> AsyncIterator[Harness]:
    prefix = f"proc{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": prefix, "IMGPIPE_TOPIC_PARTITIONS": "1",
           "IMGPIPE_PROCESSOR_WORKERS": "1"}
    settings = CommonSettings(kafka_bootstrap=env["IMGPIPE_KAFKA_BOOTSTRAP"],
                              topic_prefix=prefix, topic_partitions=1)
    await ensure_topics(settings)
    publisher = EventPublisher(settings, client_id="test")
    await publisher.start()
    consumer = AIOKafkaConsumer(Topic.IMAGE_DONE.full(prefix),
                                bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    h = Harness(env, publisher)

    async def collect() -> None:
        async for rec in consumer:
            h.seen.append(decode_as(rec.value, ImageDone))

    collector = asyncio.create_task(collect())
    try:
        yield h
    finally:
        collector.cancel()
        await consumer.stop()
        await publisher.stop()


async def test_sigterm_drains_commits_and_exits(harness: Harness, http_server: HttpServer,
                                                tmp_path: Path) -> None:
    jpeg = encode(photo(), "JPEG", quality=80)
    for name in ("slow1.jpg", "slow2.jpg", "slow3.jpg", "marker.jpg"):
        http_server.files[name] = (jpeg, "image/jpeg")
    for name in ("slow1.jpg", "slow2.jpg", "slow3.jpg"):
        http_server.delays[name] = 3.0
    seen = harness.seen
    proc, port = start_processor(harness.env, tmp_path / "p1.log")
    try:
        await wait_for(lambda: bool(health(port).get("assigned")), 120, "partition assignment")
        rid = str(uuid.uuid4())
        await harness.publisher.publish_many([
            harness.request(rid, i + 1, http_server.url(f"slow{i + 1}.jpg"))
            for i in range(3)])
        await wait_for(lambda: health(port).get("in_flight") == 3, 60, "3 images in flight")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        await wait_for(lambda: len(seen) == 3, 30, "the drained results")
        assert {e.status for e in seen} == {"succeeded"}

        # A new processor in the same group starts after the committed offset.
        proc, port = start_processor(harness.env, tmp_path / "p2.log")
        await harness.publisher.publish(
            harness.request(rid, 9, http_server.url("marker.jpg")))
        await wait_for(lambda: any(e.serial == 9 for e in seen), 120, "the marker image")
        assert sorted(e.serial for e in seen) == [1, 2, 3, 9]  # nothing redone
        assert http_server.hits["slow1.jpg"] == 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


async def test_a_slow_image_does_not_hold_up_its_partition(
        harness: Harness, http_server: HttpServer, tmp_path: Path) -> None:
    """One partition; the first image takes seconds (a retry backoff or a slow
    host): the ones behind it finish first."""
    jpeg = encode(photo(), "JPEG", quality=80)
    names = ["slow.jpg", "f1.jpg", "f2.jpg"]
    http_server.files.update({name: (jpeg, "image/jpeg") for name in names})
    http_server.delays["slow.jpg"] = 4.0
    proc, port = start_processor(harness.env, tmp_path / "p.log")
    try:
        await wait_for(lambda: bool(health(port).get("assigned")), 120, "partition assignment")
        rid = str(uuid.uuid4())
        await harness.publisher.publish_many([
            harness.request(rid, i + 1, http_server.url(name))
            for i, name in enumerate(names)])
        await wait_for(lambda: len(harness.seen) == 3, 60, "all three results")
        order = [e.url.rsplit("/", 1)[1] for e in harness.seen]
        assert order[-1] == "slow.jpg" and sorted(order[:2]) == ["f1.jpg", "f2.jpg"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
