"""A broker restart in the middle of a request loses nothing: the request
completes with every image counted once, its output CSV complete and in order,
one request.completed event and one webhook."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from deploy.brokers import BROKERS
from shared.events import RequestCompleted, decode
from shared.topics import Topic
from tests.conftest import HttpServer, env_for, own_stack, running_pipeline
from tests.flows import (
    assert_complete_in_order,
    catalog,
    output_rows,
    read_topic,
    upload,
    wait_finished,
)
from tests.imagecorpus import encode, photo

pytestmark = [pytest.mark.stack, pytest.mark.slow]
IMAGES = 80


@pytest.mark.parametrize("broker", BROKERS)
def test_a_broker_restart_mid_request_loses_nothing(
        broker: str, tmp_path: Path, http_server: HttpServer) -> None:
    tag = uuid.uuid4().hex[:8]
    http_server.prefixes[f"{tag}/"] = (encode(photo((96, 64)), "JPEG", quality=85),
                                       "image/jpeg")
    http_server.delays.update({f"{tag}/{i}.jpg": 0.6 for i in range(1, IMAGES + 1)})
    body, urls = catalog(http_server, tag, IMAGES)
    with own_stack(tmp_path / "stack", broker) as (stack, state), \
            running_pipeline(env_for(state), tmp_path / "logs") as pipeline, \
            pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body, http_server.url("hook"))
        status_url = accepted["status_url"]
        deadline = time.monotonic() + 120
        while client.get(status_url).json()["succeeded"] < 10:  # well under way
            assert time.monotonic() < deadline, "the request never got going"
            time.sleep(0.2)
        assert client.get(status_url).json()["succeeded"] < IMAGES // 2  # mid-request
        stack.restart_broker(kill=True)  # SIGKILL: no controlled shutdown

        status = wait_finished(client, status_url, within=300)
        assert (status["status"], status["succeeded"], status["failed"]) == (
            "COMPLETED", IMAGES, 0), status
        assert_complete_in_order(output_rows(client, status_url), urls)
        deadline = time.monotonic() + 60
        while client.get(status_url).json()["webhook"]["status"] != "delivered":
            assert time.monotonic() < deadline, "the webhook was never delivered"
            time.sleep(0.3)
        completed = [e for e in map(decode, asyncio.run(read_topic(
            pipeline.env["IMGPIPE_KAFKA_BOOTSTRAP"],
            Topic.REQUEST_COMPLETED.full(pipeline.env["IMGPIPE_TOPIC_PREFIX"]))))
            if isinstance(e, RequestCompleted) and e.request_id == accepted["request_id"]]
    assert len(completed) == 1
    hooks = [r for r in http_server.received if r["path"] == "/hook"]
    assert len(hooks) == 1 and hooks[0]["json"]["request_id"] == accepted["request_id"]
