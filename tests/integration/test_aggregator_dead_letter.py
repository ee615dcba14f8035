"""The aggregator parks bad messages like every other consumer (running services)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.topics import Topic
from tests.conftest import Pipeline

pytestmark = pytest.mark.stack


async def test_a_bad_image_done_is_dead_lettered_in_the_shared_envelope(
        pipeline: Pipeline) -> None:
    prefix, bootstrap = pipeline.env["IMGPIPE_TOPIC_PREFIX"], pipeline.env[
        "IMGPIPE_KAFKA_BOOTSTRAP"]
    marker = uuid.uuid4().hex
    bad = json.dumps({"event_type": "image.done", "marker": marker}).encode()  # invalid
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(Topic.IMAGE_DONE.full(prefix), bad, key=marker.encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(Topic.DEAD_LETTER.full(prefix), bootstrap_servers=bootstrap,
                                group_id=f"dlq-{marker}", auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(90):
            while found is None:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        if marker.encode() in (record.value or b""):
                            found = json.loads(record.value or b"")
    finally:
        await consumer.stop()
    assert found is not None
    assert set(found) == {"source", "error", "value"}
    assert found["source"] == f"aggregator:{Topic.IMAGE_DONE.full(prefix)}"
    assert found["value"] == bad.decode()
    assert "not a valid imgpipe event" in found["error"]
