"""The aggregator parks bad messages like every other consumer (running services)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.events import ImageRequested
from shared.topics import Topic
from tests.conftest import Pipeline, bearer

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


async def test_a_dead_lettered_event_marks_its_request_in_the_status_api(
        pipeline: Pipeline) -> None:
    """An event the aggregator cannot record shows on its request, once per event."""
    prefix, bootstrap = pipeline.env["IMGPIPE_TOPIC_PREFIX"], pipeline.env[
        "IMGPIPE_KAFKA_BOOTSTRAP"]
    async with httpx.AsyncClient(timeout=30, headers=bearer(pipeline.key)) as http:
        resp = await http.post(f"{pipeline.ingest_url}/api/v1/requests", files={"file": (
            "p.csv", "S. No.,Product Name,Input Image Urls\n1,A,https://img.example/a.jpg\n",
            "text/csv")})
        assert resp.status_code == 202, resp.text
        rid = resp.json()["request_id"]
        # A valid event on the wrong topic: the aggregator refuses it (unexpected_event).
        wrong = [ImageRequested(request_id=rid, image_id=str(uuid.uuid4()), serial=1,
                                product_name="A", position=0, url=f"https://x.example/{i}")
                 for i in range(2)]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for ev in (wrong[0], wrong[0], wrong[1]):  # the first one delivered twice
                await producer.send_and_wait(Topic.IMAGE_DONE.full(prefix), ev.encode(),
                                             key=rid.encode())
        finally:
            await producer.stop()
        status: dict[str, Any] = {}
        async with asyncio.timeout(90):
            while status.get("dead_letter_count", 0) < 2:
                await asyncio.sleep(0.3)
                status = (await http.get(f"{pipeline.status_url}/api/v1/requests/{rid}")).json()
    assert status["dead_letter_count"] == 2
    assert [d["event_id"] for d in status["dead_letters"]] == [e.event_id for e in wrong]
    assert all("unexpected_event" in d["error"] for d in status["dead_letters"])
