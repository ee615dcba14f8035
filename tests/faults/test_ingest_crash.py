"""Ingest killed (SIGKILL) at ten moments of a 20,000-row upload: either the
client got its ``202`` and the request completes with every image counted
once, or it got none and a retry with the same Idempotency-Key yields one
request that completes. No orphan pages, no unfinished request."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from deploy import services
from shared.requests import Status
from tests.conftest import HttpServer, Pipeline, running_pipeline
from tests.flows import wait_finished
from tests.imagecorpus import encode, photo

pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROWS, DISTINCT, MOMENTS = 20_000, 40, 10


@pytest.fixture
def crashable(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline of its own whose ingest takes over a killed upload after 3 s."""
    tag = uuid.uuid4().hex[:8]
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": f"c{tag}", "IMGPIPE_MONGO_DB": f"c{tag}",
           "IMGPIPE_RECEIVING_STALE_SECONDS": "3"}
    with running_pipeline(env, tmp_path / "logs") as pipeline:
        yield pipeline


def send(url: str, body: str, key: str) -> httpx.Response:
    with httpx.Client(timeout=120) as client:
        return client.post(f"{url}/api/v1/requests", headers={"Idempotency-Key": key},
                           files={"file": ("catalog.csv", body, "text/csv")})


def until_accepted(url: str, body: str, key: str, within: float = 120) -> dict[str, Any]:
    """Retry an upload as a client would (same key, honouring Retry-After)."""
    deadline = time.monotonic() + within
    while True:
        try:
            resp = send(url, body, key)
        except httpx.TransportError:
            resp = None
        if resp is not None and resp.status_code == 202:
            accepted: dict[str, Any] = resp.json()
            return accepted
        assert resp is None or resp.status_code in (409, 503), resp.text
        assert time.monotonic() < deadline, "the retried upload was never accepted"
        wait = float(resp.headers.get("retry-after", 1)) if resp is not None else 0.5
        time.sleep(min(wait, 2.0))  # Retry-After, as a client honours it


@pytest.mark.timeout(1200)
def test_ingest_killed_at_ten_moments_of_an_upload(crashable: Pipeline,
                                                   http_server: HttpServer) -> None:
    pipeline, tag = crashable, uuid.uuid4().hex[:8]
    http_server.prefixes[f"{tag}/"] = (encode(photo((48, 32)), "JPEG", quality=80),
                                       "image/jpeg")
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f"{i},Item {i},{http_server.url(f'{tag}/{i % DISTINCT}.jpg')}"
              for i in range(1, ROWS + 1)]
    body = "\n".join(lines) + "\n"
    [ingest] = [s for s in pipeline.running.items if s.name == "ingest"]

    started = time.monotonic()
    baseline = until_accepted(pipeline.ingest_url, body, uuid.uuid4().hex)
    upload_seconds = time.monotonic() - started
    accepted, answered_before_kill = [baseline], 0
    for i in range(MOMENTS):  # from the first bytes to just after the 202
        moment = upload_seconds * 1.2 * i / (MOMENTS - 1)
        key = uuid.uuid4().hex
        answer: list[httpx.Response | BaseException] = []

        def attempt(key: str = key, answer: list[Any] = answer) -> None:
            try:
                answer.append(send(pipeline.ingest_url, body, key))
            except BaseException as exc:
                answer.append(exc)

        sender = threading.Thread(target=attempt)
        sender.start()
        killer = threading.Timer(moment, services.restart, args=(ingest,))
        killer.start()
        killer.join()
        sender.join(180)
        [got] = answer
        if isinstance(got, httpx.Response) and got.status_code == 202:
            answered_before_kill += 1
            first = got.json()
            # The same key after the crash answers the same request.
            assert until_accepted(pipeline.ingest_url, body, key)["request_id"] == (
                first["request_id"])
            accepted.append(first)
        else:
            assert isinstance(got, httpx.TransportError) or (
                isinstance(got, httpx.Response) and got.status_code in (409, 503)), got
            accepted.append(until_accepted(pipeline.ingest_url, body, key))
    assert 0 < answered_before_kill < MOMENTS, "the kills missed the upload"

    with httpx.Client(timeout=60) as client:
        for a in accepted:
            status = wait_finished(client, a["status_url"], within=600)
            assert (status["status"], status["succeeded"], status["failed"]) == (
                "COMPLETED", ROWS, 0), status
    assert_no_orphans(pipeline, {a["request_id"] for a in accepted})


def assert_no_orphans(pipeline: Pipeline, request_ids: set[str]) -> None:
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(pipeline.env["IMGPIPE_MONGO_URI"]) as mongo:
        db: Any = mongo[pipeline.env["IMGPIPE_MONGO_DB"]]
        requests = {d["_id"]: d for d in db.requests.find({}, {"status": 1})}
        assert set(requests) == request_ids  # one request per key, nothing half-received
        assert all(d["status"] == Status.COMPLETED for d in requests.values())
        pages = db.product_pages.aggregate([{"$group": {
            "_id": "$request_id", "rows": {"$sum": {"$size": "$rows"}}}}])
        assert {p["_id"]: p["rows"] for p in pages} == dict.fromkeys(request_ids, ROWS)
        images = db.images.aggregate([{"$group": {"_id": "$request_id", "n": {"$sum": 1}}}])
        assert {i["_id"]: i["n"] for i in images} == dict.fromkeys(request_ids, ROWS)
