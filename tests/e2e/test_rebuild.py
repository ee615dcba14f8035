"""Recovery: a finished request rebuilt from its events alone into an empty
database has the same status, products and output CSV (byte for byte)."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.storage import ObjectStore
from tests.conftest import HttpServer, bearer, running_pipeline
from tests.flows import settings_of, unsigned, unsigned_table, wait_finished
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack
SAME = ("status", "product_count", "image_count", "succeeded", "failed", "processed",
        "published", "progress", "created_at", "failures", "failure_count")


def rebuild(env: dict[str, str], *args: str, expect: int = 0) -> str:
    done = subprocess.run([sys.executable, "-m", "deploy.rebuild", "--idle", "3",
                           *args], env={**os.environ, **env}, timeout=180,
                          capture_output=True, text=True)
    assert done.returncode == expect, done.stderr
    return done.stderr


def snapshot(client: httpx.Client, env: dict[str, str], status_url: str
             ) -> tuple[dict[str, Any], Any, list[list[str]], bytes]:
    """Status, products, live CSV (links unsigned: presigned links differ by
    when they were minted) and the archived output CSV (canonical URLs), as bytes."""
    status = wait_finished(client, status_url, within=120)
    products = client.get(f"{status_url}/products", params={"limit": 1000}).json()
    for p in products:
        p["output_urls"] = [u and unsigned(u) for u in p["output_urls"]]
    live = client.get(f"{status_url}/output.csv")
    assert live.status_code == 200
    rows = unsigned_table(list(csv.reader(io.StringIO(live.content.decode("utf-8-sig")))))
    archived = asyncio.run(ObjectStore(settings_of(env)).get(
        f"{status_url.rsplit('/', 1)[1]}/output.csv"))
    return {k: status.get(k) for k in SAME}, products, rows, archived


def test_a_request_rebuilt_from_its_events_into_an_empty_database_is_the_same(
        stack_env: dict[str, str], tmp_path: Path, http_server: HttpServer) -> None:
    tag = uuid.uuid4().hex[:8]
    http_server.prefixes[f"{tag}/"] = (encode(photo((64, 48)), "JPEG", quality=85),
                                       "image/jpeg")
    url = http_server.url
    rows = ["S. No.,Product Name,Input Image Urls"]
    rows += [f'{i},"Item {i}, ""quoted""","{url(f"{tag}/{i}a.jpg")}, {url(f"{tag}/{i}b.jpg")}"'
             for i in range(1, 121)]
    rows += [f"121,Repeated,{url(f'{tag}/1a.jpg')}",  # the same URL as row 1
             f"122,Broken,{url('missing/none.jpg')}"]  # a 404: a failed image
    body = "\n".join(rows) + "\n"
    env = {**stack_env, "IMGPIPE_TOPIC_PREFIX": f"rb{tag}", "IMGPIPE_MONGO_DB": f"rb{tag}"}
    with httpx.Client(timeout=60) as client:
        with running_pipeline(env, tmp_path / "logs-a") as first:
            client.headers.update(bearer(first.key))
            accepted = client.post(f"{first.ingest_url}/api/v1/requests",
                                   files={"file": ("catalog.csv", body, "text/csv")},
                                   data={"webhook_url": url("hook")})
            assert accepted.status_code == 202, accepted.text
            rid = accepted.json()["request_id"]
            before = snapshot(client, env, f"{first.status_url}/api/v1/requests/{rid}")
        assert before[0]["status"] == "COMPLETED_WITH_ERRORS" and before[0]["failed"] == 1

        empty = {**env, "IMGPIPE_MONGO_DB": f"rb{tag}x"}  # same topics, a new database
        with running_pipeline(empty, tmp_path / "logs-b") as second:
            # The tenant's key, made again in the new database (keys are not events).
            client.headers.update(bearer(second.new_key(first.tenant)["key"]))
            status_url = f"{second.status_url}/api/v1/requests/{rid}"
            assert client.get(status_url).status_code == 404
            assert "no request.created" in rebuild(empty, "--request-id", "no-such", expect=2)
            rebuild(empty, "--request-id", rid)
            after = snapshot(client, empty, status_url)
            # Rebuilding twice is refused: the request is there now.
            assert "is in the database" in rebuild(empty, "--request-id", rid, expect=2)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2] == before[2]  # the live output CSV, links unsigned
    assert after[3] == before[3]  # the archived output CSV, byte for byte
