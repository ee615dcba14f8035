"""Backpressure at the front door: more uploads than ingest may parse at once
get ``503`` with ``Retry-After`` in the project's problem body (never a 500),
nothing of a refused upload is stored, and every accepted one is whole."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from deploy import services
from shared.products import id_range
from shared.requests import Status
from tests.conftest import bearer, new_key

pytestmark = pytest.mark.stack
UPLOADS, ROWS = 8, 4000


@contextlib.contextmanager
def ingest_only(env: dict[str, str], logs: Path) -> Iterator[tuple[str, str]]:
    """The ingest service alone (its relay publishes; nothing consumes), on a
    free port: its base URL and an API key of a tenant of its own."""
    ports = services.ServicePorts.free()
    [svc] = [s for s in services.plan(env, ports, processors=0) if s.name == "ingest"]
    running = services.start([svc], log_dir=logs, timeout=120)
    try:
        yield f"http://127.0.0.1:{ports.ingest}", new_key(env)["key"]
    finally:
        running.stop()


@pytest.fixture
def narrow_ingest(stack_env: dict[str, str], tmp_path: Path
                  ) -> Iterator[tuple[str, str, str]]:
    """Ingest that parses one upload at a time and lets the next wait 50 ms."""
    tag = uuid.uuid4().hex[:8]
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": f"b{tag}", "IMGPIPE_MONGO_DB": f"b{tag}",
           "IMGPIPE_MAX_CONCURRENT_UPLOADS": "1", "IMGPIPE_UPLOAD_WAIT_SECONDS": "0.05",
           "IMGPIPE_RETRY_AFTER_SECONDS": "3"}
    with ingest_only(env, tmp_path) as (url, key):
        yield url, env["IMGPIPE_MONGO_DB"], key


def big_csv(rows: int) -> str:
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f"{i},Item {i},https://img.example.com/{i}/a.jpg,https://img.example.com/{i}/b.jpg"
              for i in range(1, rows + 1)]
    return "\n".join(lines) + "\n"


def test_uploads_beyond_the_bound_get_503_with_retry_after_and_store_nothing(
        narrow_ingest: tuple[str, str, str], stack_env: dict[str, str]) -> None:
    url, db, key = narrow_ingest
    body = big_csv(ROWS)

    def send(i: int) -> httpx.Response:
        with httpx.Client(timeout=120, headers=bearer(key)) as client:
            return client.post(f"{url}/api/v1/requests",
                               files={"file": (f"p{i}.csv", body, "text/csv")})

    with ThreadPoolExecutor(UPLOADS) as pool:
        answers = list(pool.map(send, range(UPLOADS)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 503}, [(r.status_code, r.text[:300]) for r in answers]
    assert 202 in codes and 503 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.headers["retry-after"] == "3"
            problem = r.json()
            assert (problem["status"], problem["code"]) == (503, "overloaded"), problem
            assert problem["type"] == "urn:imgpipe:problem:overloaded"
            assert "Retry-After" in problem["detail"]
    accepted = [r.json()["request_id"] for r in answers if r.status_code == 202]
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(stack_env["IMGPIPE_MONGO_URI"]) as mongo:
        requests: list[dict[str, Any]] = list(
            mongo[db].requests.find({}, {"status": 1, "image_count": 1}))
        assert sorted(d["_id"] for d in requests) == sorted(accepted)  # refused: nothing
        assert all(d["status"] != Status.RECEIVING and d["image_count"] == 2 * ROWS
                   for d in requests), requests
        for rid in accepted:  # every page of every accepted upload
            pages: list[dict[str, Any]] = list(mongo[db].product_pages.find(
                {"_id": id_range(rid)}, {"rows.serial": 1}))
            rows = sum(len(p["rows"]) for p in pages)
            assert rows == ROWS, rid
