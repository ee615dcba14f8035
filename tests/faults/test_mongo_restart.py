"""MongoDB restarts and outages at the front door: a restart between two
uploads is invisible to the client (the stale pooled connections are retried
on fresh ones), an upload while MongoDB is down gets ``503`` with
``Retry-After`` (never a 500), and the first upload once it is back gets its
``202``."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, env_for, own_stack
from tests.integration.test_ingest_backpressure import big_csv, ingest_only

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def post(client: httpx.Client, url: str, body: str) -> httpx.Response:
    return client.post(f"{url}/api/v1/requests", headers={
        "Idempotency-Key": uuid.uuid4().hex}, files={"file": ("p.csv", body, "text/csv")})


def test_a_mongodb_restart_or_outage_never_answers_500(tmp_path: Path) -> None:
    body = big_csv(50)
    with own_stack(tmp_path / "stack") as (stack, state), \
            ingest_only(env_for(state), tmp_path / "logs") as (url, key), \
            httpx.Client(timeout=60, headers=bearer(key)) as client:
        for _ in range(3):  # a few pooled connections in use
            assert post(client, url, body).status_code == 202

        stack.stop_server("mongo")
        stack.start_server("mongo")
        first = post(client, url, body)  # on connections the old server had
        assert first.status_code == 202, first.text

        stack.stop_server("mongo", kill=True)
        down = post(client, url, body)
        assert down.status_code == 503, down.text
        assert down.headers["content-type"].startswith("application/problem+json")
        assert int(down.headers["retry-after"]) >= 1
        assert down.json()["code"] == "service_unavailable", down.json()
        health = client.get(f"{url}/health")
        assert (health.status_code, health.json()["mongo"]) == (503, "unavailable")

        stack.start_server("mongo")
        back = post(client, url, body)
        assert back.status_code == 202, back.text
        status = client.get(f"{url}/health")
        assert status.status_code == 200, status.text
