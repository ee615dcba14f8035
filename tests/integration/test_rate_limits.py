"""Per-key limits of the running APIs: uploads a minute, requests in progress,
status reads a second; each answered 429 with Retry-After and the problem body."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy import services
from tests.conftest import bearer, new_key

pytestmark = pytest.mark.stack


@dataclass
class Limited:
    ingest: str
    status: str
    env: dict[str, str]


@pytest.fixture
def limited(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Limited]:
    """Ingest and the status API with small limits (no processors: every
    accepted request stays in progress)."""
    tag = uuid.uuid4().hex[:8]
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": f"l{tag}", "IMGPIPE_MONGO_DB": f"l{tag}",
           "IMGPIPE_RATE_UPLOADS_PER_MINUTE": "6", "IMGPIPE_RATE_UPLOADS_BURST": "3",
           "IMGPIPE_MAX_ACTIVE_REQUESTS": "2", "IMGPIPE_ACTIVE_RETRY_AFTER_SECONDS": "30",
           "IMGPIPE_RATE_STATUS_PER_SECOND": "0.5", "IMGPIPE_RATE_STATUS_BURST": "3"}
    ports = services.ServicePorts.free()
    planned = [s for s in services.plan(env, ports, processors=0)
               if s.name in ("ingest", "status-api")]
    running = services.start(planned, log_dir=tmp_path, timeout=120)
    try:
        yield Limited(f"http://127.0.0.1:{ports.ingest}", f"http://127.0.0.1:{ports.status}",
                      env)
    finally:
        running.stop()


def upload(base: str, key: str) -> httpx.Response:
    body = f"S. No.,Product Name,Input Image Urls\n1,A,https://img.invalid/{uuid.uuid4()}.jpg\n"
    return httpx.post(f"{base}/api/v1/requests", headers=bearer(key), timeout=60,
                      files={"file": ("p.csv", body, "text/csv")})


def assert_limited(resp: httpx.Response, *, at_least: int, at_most: int) -> str:
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert at_least <= int(resp.headers["retry-after"]) <= at_most, resp.headers
    body = resp.json()
    assert body["code"] == "rate_limited"
    return str(body["detail"])


def test_uploads_and_requests_in_progress_are_limited_per_key(limited: Limited) -> None:
    key = new_key(limited.env)["key"]
    first, second = upload(limited.ingest, key), upload(limited.ingest, key)
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    # Two requests in progress: the third waits for one of them to finish.
    why = assert_limited(upload(limited.ingest, key), at_least=30, at_most=30)
    assert "2 of your requests are still in progress" in why
    # The burst of three uploads is used up: the fourth waits for the rate (6 a minute).
    why = assert_limited(upload(limited.ingest, key), at_least=1, at_most=10)
    assert "at most 6 a minute" in why
    # Another tenant's key has limits of its own.
    assert upload(limited.ingest, new_key(limited.env)["key"]).status_code == 202


def test_status_reads_are_limited_per_key(limited: Limited) -> None:
    key, other = new_key(limited.env)["key"], new_key(limited.env)["key"]
    rid = upload(limited.ingest, key).json()["request_id"]
    url = f"{limited.status}/api/v1/requests/{rid}"
    for _ in range(2):  # the upload above did not read: three reads in the burst
        assert httpx.get(url, headers=bearer(key)).status_code == 200
    assert httpx.get(f"{url}/products", headers=bearer(key)).status_code == 200
    why = assert_limited(httpx.get(url, headers=bearer(key)), at_least=1, at_most=2)
    assert "status reads" in why
    assert httpx.get(url, headers=bearer(other)).status_code == 404  # not limited, not theirs
