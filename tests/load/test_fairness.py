"""Fairness: a small request sent while a big one is processing finishes in
seconds, long before the big one, because the relay publishes each request's
images in bounded windows (bench/bench_outbox.py measures the full-size
case: 10 images during 30,000)."""

from __future__ import annotations

import time
import uuid

import pytest

from shared.requests import TERMINAL_STATUSES
from tests.conftest import HttpServer, Pipeline
from tests.flows import assert_complete_in_order, catalog, output_rows, upload, wait_finished
from tests.imagecorpus import encode, photo

pytestmark = [pytest.mark.stack, pytest.mark.slow]
BIG, SMALL, SMALL_WITHIN = 3000, 10, 10.0


@pytest.mark.timeout(900)
def test_a_small_request_finishes_in_seconds_while_a_big_one_is_processing(
        pipeline: Pipeline, http_server: HttpServer) -> None:
    image = (encode(photo((48, 32)), "JPEG", quality=80), "image/jpeg")
    big_tag, small_tag = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    http_server.prefixes[f"{big_tag}/"] = http_server.prefixes[f"{small_tag}/"] = image
    big_body, _ = catalog(http_server, big_tag, BIG)
    small_body, small_urls = catalog(http_server, small_tag, SMALL)
    with pipeline.client(timeout=60) as client:
        big = upload(client, pipeline.ingest_url, big_body)
        deadline = time.monotonic() + 120
        while client.get(big["status_url"]).json()["succeeded"] < 200:  # well under way
            assert time.monotonic() < deadline, "the big request never got going"
            time.sleep(0.2)

        started = time.monotonic()
        small = upload(client, pipeline.ingest_url, small_body)
        status = wait_finished(client, small["status_url"], within=60)
        took = time.monotonic() - started
        big_then = client.get(big["status_url"]).json()
        assert (status["status"], status["succeeded"]) == ("COMPLETED", SMALL), status
        assert took < SMALL_WITHIN, f"the small request took {took:.1f}s behind the big one"
        assert big_then["status"] not in TERMINAL_STATUSES, big_then  # it really overlapped
        assert_complete_in_order(output_rows(client, small["status_url"]), small_urls)

        done = wait_finished(client, big["status_url"], within=600)
        assert (done["status"], done["succeeded"]) == ("COMPLETED", BIG), done
