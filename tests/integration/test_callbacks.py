"""Signed callbacks from an external processing service, end to end."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.requests import TERMINAL_STATUSES
from shared.signing import sign
from tests.conftest import Pipeline

pytestmark = pytest.mark.stack


@pytest.fixture
def silent_host() -> Iterator[str]:
    """Accepts TCP connections and never answers: our own fetch just waits."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def post(p: Pipeline, body: dict[str, Any], *, secret: str | None = None,
         header: str | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()
    sig = header if header is not None else sign(secret or p.env["IMGPIPE_CALLBACK_SECRET"], raw)
    return p.http.post(f"{p.ingest_url}/api/v1/callbacks/image-processed", content=raw,
                      headers={"X-Imgpipe-Signature": sig,
                               "Content-Type": "application/json"})


def test_callbacks_complete_a_request(pipeline: Pipeline, silent_host: str) -> None:
    urls = [f"{silent_host}/a.jpg", f"{silent_host}/b.jpg"]
    csv = f'S. No.,Product Name,Input Image Urls\n1,Lamp,"{urls[0]}, {urls[1]}"\n'
    resp = pipeline.http.post(f"{pipeline.ingest_url}/api/v1/requests",
                      files={"file": ("p.csv", csv, "text/csv")})
    rid = resp.json()["request_id"]
    ok = {"request_id": rid, "row": 0, "position": 0, "url": urls[0],
          "status": "succeeded", "output_url": "https://cdn.example/out/a.jpg",
          "quality_in": 80, "quality_out": 40}
    bad = {"request_id": rid, "row": 0, "position": 1, "url": urls[1], "status": "failed",
           "error_code": "vendor_timeout", "error_message": "the vendor gave up"}

    assert post(pipeline, ok, secret="wrong-secret").status_code == 401
    assert post(pipeline, ok, header="").status_code == 401
    assert post(pipeline, ok, header=sign(pipeline.env["IMGPIPE_CALLBACK_SECRET"], b"{}",
                                          int(time.time()) - 3600)).status_code == 401
    wrong_place = post(pipeline, {**ok, "position": 5})
    assert wrong_place.status_code == 422
    assert wrong_place.json()["errors"][0]["code"] == "unknown_position"
    missing = post(pipeline, {**ok, "output_url": None})
    assert missing.status_code == 422

    assert post(pipeline, ok).status_code == 202
    assert post(pipeline, bad).status_code == 202
    assert post(pipeline, ok).status_code == 202  # a retried callback counts once

    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}").json()
        if status["status"] in TERMINAL_STATUSES:  # counted, then finished: two updates
            break
        time.sleep(0.3)
    assert status["status"] == "COMPLETED_WITH_ERRORS", status
    assert (status["succeeded"], status["failed"]) == (1, 1)
    assert status["failures"][0]["error_code"] == "vendor_timeout"
    products = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}/products").json()
    assert products[0]["output_urls"] == ["https://cdn.example/out/a.jpg", None]


def test_a_callback_for_a_covered_position_applies_to_that_position_only(
        pipeline: Pipeline, silent_host: str) -> None:
    """A URL repeated at three rows has one event (row 0 leads, rows 1 and 2
    are covered); a callback addresses any of its positions by row, and its
    result is that position's alone."""
    url = f"{silent_host}/same.jpg"
    csv = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f"{i},Lamp {i},{url}\n" for i in (1, 2, 3))
    rid = pipeline.http.post(f"{pipeline.ingest_url}/api/v1/requests",
                     files={"file": ("p.csv", csv, "text/csv")}).json()["request_id"]
    for row in (1, 0, 2, 1):  # a covered position first, and once more at the end
        body = {"request_id": rid, "row": row, "position": 0, "url": url,
                "status": "succeeded", "output_url": f"https://cdn.example/out/{row}.jpg"}
        assert post(pipeline, body).status_code == 202
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}").json()
        if status["status"] in TERMINAL_STATUSES:
            break
        time.sleep(0.3)
    assert (status["status"], status["succeeded"], status["failed"]) == ("COMPLETED", 3, 0)
    products = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}/products").json()
    assert [p["output_urls"] for p in products] == [
        [f"https://cdn.example/out/{row}.jpg"] for row in (0, 1, 2)]
