"""Ingest killed (SIGKILL) at ten moments of a 20,000-row upload: either the
client got its ``202`` and the request completes with every image counted
once, or it got none and a retry with the same Idempotency-Key yields one
request that completes. No orphan pages, no unfinished request.

The moments are found by watching the upload's progress in MongoDB (not by a
clock): before anything is stored, while it is validated, at six points of
storing its pages, as it turns ``QUEUED``, and just after the ``202``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from deploy import services
from shared.products import MAX_PAGE_ROWS, id_range
from shared.requests import Status
from tests.conftest import HttpServer, Pipeline, bearer, running_pipeline
from tests.flows import wait_finished
from tests.imagecorpus import encode, photo

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.stack, pytest.mark.slow]
ROWS, DISTINCT = 20_000, 40
PAGES = ROWS // MAX_PAGE_ROWS
STORING = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)  # of the pages stored


@pytest.fixture
def crashable(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline of its own whose ingest takes over a killed upload after 3 s."""
    tag = uuid.uuid4().hex[:8]
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": f"c{tag}", "IMGPIPE_MONGO_DB": f"c{tag}",
           "IMGPIPE_RECEIVING_STALE_SECONDS": "3"}
    with running_pipeline(env, tmp_path / "logs") as pipeline:
        yield pipeline


@dataclass
class Progress:
    """How far the upload with one Idempotency-Key got, as MongoDB shows it."""
    status: str | None  # None: no request document yet
    pages: int


class Watch:
    def __init__(self, pipeline: Pipeline) -> None:
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(pipeline.env["IMGPIPE_MONGO_URI"])
        self.db: Any = self.mongo[pipeline.env["IMGPIPE_MONGO_DB"]]

    def progress(self, key: str) -> Progress:
        doc = self.db.requests.find_one({"idempotency_key": key}, {"status": 1})
        if doc is None:
            return Progress(None, 0)
        return Progress(doc["status"],
                        self.db.product_pages.count_documents({"_id": id_range(doc["_id"])}))


def send(url: str, body: str, key: str, api_key: str) -> httpx.Response:
    with httpx.Client(timeout=120, headers=bearer(api_key)) as client:
        return client.post(f"{url}/api/v1/requests", headers={"Idempotency-Key": key},
                           files={"file": ("catalog.csv", body, "text/csv")})


def until_accepted(url: str, body: str, key: str, api_key: str,
                   within: float = 120) -> dict[str, Any]:
    """Retry an upload as a client would (same key, honouring Retry-After)."""
    deadline = time.monotonic() + within
    while True:
        try:
            resp = send(url, body, key, api_key)
        except httpx.TransportError:
            resp = None
        if resp is not None and resp.status_code == 202:
            accepted: dict[str, Any] = resp.json()
            return accepted
        assert resp is None or resp.status_code in (409, 429, 503), resp.text
        assert time.monotonic() < deadline, "the retried upload was never accepted"
        wait = float(resp.headers.get("retry-after", 1)) if resp is not None else 0.5
        time.sleep(min(wait, 2.0))  # Retry-After, as a client honours it


class Upload(threading.Thread):
    """One upload in the background: its answer (or the error) when it ends."""

    def __init__(self, pipeline: Pipeline, body: str) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.key = pipeline.ingest_url, body, uuid.uuid4().hex
        self.api_key = pipeline.key
        self.started = time.monotonic()
        self.answer: httpx.Response | BaseException | None = None

    def run(self) -> None:
        try:
            self.answer = send(self.url, self.body, self.key, self.api_key)
        except BaseException as exc:
            self.answer = exc


def wait_for(upload: Upload, watch: Watch, moment: Callable[[Upload, Progress], bool],
             within: float = 120) -> Progress:
    """Poll (bounded) until ``moment`` is reached or the upload has ended."""
    deadline = time.monotonic() + within
    while True:
        seen = watch.progress(upload.key)
        if moment(upload, seen) or not upload.is_alive():
            return seen
        assert time.monotonic() < deadline, f"the upload never reached the moment: {seen}"
        time.sleep(0.005)


def pages_at_least(n: int) -> Callable[[Upload, Progress], bool]:
    return lambda u, p: p.pages >= n


def moments(to_store: float) -> list[tuple[str, Callable[[Upload, Progress], bool]]]:
    """Ten moments, from the first bytes to just after the 202; ``to_store`` is
    how long an upload takes until its request document is stored."""
    found: list[tuple[str, Callable[[Upload, Progress], bool]]] = [
        ("at once", lambda u, p: True),
        ("validating", lambda u, p: time.monotonic() - u.started >= to_store / 2
         or p.status is not None)]
    found += [(f"{f:.0%} of the pages stored", pages_at_least(max(1, round(f * PAGES))))
              for f in STORING]
    found += [("turned QUEUED", lambda u, p: p.status == Status.QUEUED),
              ("answered", lambda u, p: u.answer is not None)]
    return found


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
    watch = Watch(pipeline)

    baseline = Upload(pipeline, body)
    baseline.start()
    wait_for(baseline, watch, lambda u, p: p.status is not None)
    to_store = time.monotonic() - baseline.started
    baseline.join(180)
    assert isinstance(baseline.answer, httpx.Response) and baseline.answer.status_code == 202
    accepted, killed_while, answered = [baseline.answer.json()], {}, []
    for name, moment in moments(to_store):
        upload = Upload(pipeline, body)
        upload.start()
        wait_for(upload, watch, moment)
        assert ingest.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ingest.pid, signal.SIGKILL)
        killed_while[name] = watch.progress(upload.key).status  # frozen: ingest is dead
        services.restart(ingest)
        upload.join(180)
        got = upload.answer
        if isinstance(got, httpx.Response) and got.status_code == 202:
            first = got.json()
            answered.append(name)
            # The same key after the crash answers the same request.
            again = until_accepted(pipeline.ingest_url, body, upload.key, pipeline.key)
            assert again["request_id"] == first["request_id"]
            accepted.append(first)
        else:
            assert isinstance(got, httpx.TransportError) or (
                isinstance(got, httpx.Response) and got.status_code in (409, 503)), got
            accepted.append(until_accepted(pipeline.ingest_url, body, upload.key, pipeline.key))
    # The kills did land where they were meant to: mid-store, and after a 202.
    mid_store = [n for n, s in killed_while.items() if s == Status.RECEIVING]
    log.info("killed while: %s; answered before the kill: %s", killed_while, answered)
    assert len(mid_store) >= 4 and "answered" in answered, (killed_while, answered)

    with pipeline.client(timeout=60) as client:
        for a in accepted:
            status = wait_finished(client, a["status_url"], within=600)
            assert (status["status"], status["succeeded"], status["failed"]) == (
                "COMPLETED", ROWS, 0), status
    assert_no_orphans(watch, {a["request_id"] for a in accepted})
    watch.mongo.close()


def assert_no_orphans(watch: Watch, request_ids: set[str]) -> None:
    db = watch.db
    requests = {d["_id"]: d for d in db.requests.find({}, {"status": 1})}
    assert set(requests) == request_ids  # one request per key, nothing half-received
    assert all(d["status"] == Status.COMPLETED for d in requests.values())
    pages = db.product_pages.aggregate([{"$group": {
        "_id": "$request_id", "rows": {"$sum": {"$size": "$rows"}}}}])
    assert {p["_id"]: p["rows"] for p in pages} == dict.fromkeys(request_ids, ROWS)
    images = db.images.aggregate([{"$group": {"_id": "$request_id", "n": {"$sum": 1}}}])
    assert {i["_id"]: i["n"] for i in images} == dict.fromkeys(request_ids, ROWS)
