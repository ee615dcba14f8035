"""Operators replay events from Kafka to reprocess a request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import HttpServer, Pipeline
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack


def wait_status(p: Pipeline, rid: str, ok: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = p.http.get(f"{p.status_url}/api/v1/requests/{rid}").json()
        if ok(status):
            return status
        time.sleep(0.4)
    raise AssertionError(f"timed out; last status {status}")


def replay(p: Pipeline, *args: str, expect: int = 0) -> str:
    done = subprocess.run([sys.executable, "-m", "deploy.replay", "--idle", "3", *args],
                          env={**os.environ, **p.env}, timeout=120, capture_output=True,
                          text=True)
    assert done.returncode == expect, done.stderr
    return done.stderr


def test_replay_and_reset_reprocess_a_request(pipeline: Pipeline,
                                              http_server: HttpServer) -> None:
    http_server.files["r1.jpg"] = (encode(photo(), "JPEG", quality=88), "image/jpeg")
    http_server.files["r2.jpg"] = (encode(photo((200, 150)), "JPEG", quality=70), "image/jpeg")
    csv = ("S. No.,Product Name,Input Image Urls\n"
           f'1,Desk,"{http_server.url("r1.jpg")},{http_server.url("r2.jpg")}"\n')
    rid = pipeline.http.post(f"{pipeline.ingest_url}/api/v1/requests",
                     files={"file": ("p.csv", csv, "text/csv")},
                     data={"webhook_url": http_server.url("hook")}).json()["request_id"]
    first = wait_status(pipeline, rid, lambda s: s["webhook"]["status"] == "delivered")
    assert first["status"] == "COMPLETED" and len(http_server.received) == 1
    assert http_server.hits == {"r1.jpg": 1, "r2.jpg": 1}

    # A plain replay is harmless: images are redone, nothing is counted twice.
    replay(pipeline, "--topic", "image.requested", "--request-id", rid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and http_server.hits != {"r1.jpg": 2, "r2.jpg": 2}:
        time.sleep(0.3)
    assert http_server.hits == {"r1.jpg": 2, "r2.jpg": 2}
    again = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}").json()
    assert (again["succeeded"], again["failed"], again["status"]) == (2, 0, "COMPLETED")
    assert again["completed_at"] == first["completed_at"]
    assert len(http_server.received) == 1

    # A reset that would leave the request unfinished is refused, changing nothing.
    refused = replay(pipeline, "--topic", "request.completed", "--request-id", rid, "--reset",
                     expect=2)
    assert "only goes with image.requested" in refused
    refused = replay(pipeline, "--topic", "image.requested", "--request-id", rid,
                     "--request-id", "no-such-request", "--reset", expect=2)
    assert "no request no-such-request" in refused
    assert pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}").json()["status"] == \
        "COMPLETED"

    # --reset: the request is processed afresh and completes (and notifies) again.
    replay(pipeline, "--topic", "image.requested", "--request-id", rid, "--reset")
    redone = wait_status(pipeline, rid, lambda s: s["status"] == "COMPLETED"
                         and s["webhook"]["status"] == "delivered" and s["output_csv_url"])
    assert redone["completed_at"] != first["completed_at"]
    assert (redone["succeeded"], redone["failed"]) == (2, 0)
    assert len(http_server.received) == 2
    deadline = time.monotonic() + 60  # every image really was fetched again
    while time.monotonic() < deadline and http_server.hits != {"r1.jpg": 3, "r2.jpg": 3}:
        time.sleep(0.3)
    assert http_server.hits == {"r1.jpg": 3, "r2.jpg": 3}
