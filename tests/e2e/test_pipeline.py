"""The whole path on the real local stack: CSV in, compressed images, status,
output CSV and one webhook out."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from services.processor.engine import estimate_quality
from shared.storage import ObjectStore
from tests.conftest import HttpServer, Pipeline
from tests.flows import settings_of, unsigned_table
from tests.imagecorpus import encode, photo, rgba_photo

pytestmark = pytest.mark.stack
TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"}


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], *, timeout: float,
         what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if until(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def half(q: int) -> int:
    return int(q / 2 + 0.5)


def test_csv_to_output_csv_and_webhook(pipeline: Pipeline, http_server: HttpServer) -> None:
    jpeg_qualities = {"p1a.jpg": 90, "p1b.jpg": 75, "p2a.jpg": 60, "p2c.jpg": 85,
                      "p3a.jpg": 95, "p3c.jpg": 70}
    for i, (name, q) in enumerate(jpeg_qualities.items()):
        http_server.files[name] = (encode(photo((360 + 8 * i, 240)), "JPEG", quality=q),
                                   "image/jpeg")
    http_server.files["p2b.png"] = (encode(photo((300, 200)), "PNG"), "image/png")
    http_server.files["p3b.png"] = (encode(rgba_photo(), "PNG"), "image/png")
    u = http_server.url
    rows = [
        (1, "Shoe, red", [u("p1a.jpg"), u("p1b.jpg"), u("missing.jpg")]),
        (2, "Bag", [u("p2a.jpg"), u("p2b.png"), u("p2c.jpg")]),
        (3, "Hat", [u("p3a.jpg"), u("p3b.png"), u("p3c.jpg")]),
    ]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for serial, name, urls in rows:
        writer.writerow([f"{serial}.", name, ",".join(urls)])
    webhook = u("hook")

    with pipeline.client(timeout=30) as client:
        resp = client.post(f"{pipeline.ingest_url}/api/v1/requests",
                           files={"file": ("products.csv", out.getvalue(), "text/csv")},
                           data={"webhook_url": webhook})
        assert resp.status_code == 202, resp.text
        accepted = resp.json()
        assert accepted["product_count"] == 3 and accepted["image_count"] == 9
        status_url = accepted["status_url"]
        assert status_url.endswith(accepted["request_id"])
        first = client.get(status_url)  # visible at once: never a 404 for an id we returned
        assert first.status_code == 200, first.text

        status = poll(lambda: client.get(status_url).json(),
                      lambda s: s["status"] in TERMINAL and s["output_csv_url"],
                      timeout=300, what="the request to finish")
        assert status["status"] == "COMPLETED_WITH_ERRORS", status
        assert (status["succeeded"], status["failed"], status["processed"]) == (8, 1, 9)
        assert status["progress"] == 1.0
        [failure] = status["failures"]
        assert failure["serial"] == 1 and failure["position"] == 2
        assert failure["error_code"] == "http_404" and failure["error_message"]

        # output_csv_url: the status API's live CSV, with presigned output links.
        assert status["output_csv_url"] == f"{status_url}/output.csv"
        table = list(csv.reader(io.StringIO(
            client.get(status["output_csv_url"]).content.decode("utf-8-sig"))))
        assert table[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
        assert [r[0] for r in table[1:]] == ["1", "2", "3"]
        for (_serial, name, urls), row in zip(rows, table[1:], strict=True):
            assert row[1] == name
            inputs = [x.strip() for x in row[2].split(",")]
            outputs = [x.strip() for x in row[3].split(",")]
            assert inputs == urls and len(outputs) == len(urls)
            for url, output in zip(urls, outputs, strict=True):
                name_in = url.rsplit("/", 1)[1]
                if name_in == "missing.jpg":
                    assert output == ""
                    continue
                original = http_server.files[name_in][0]
                body = httpx.get(output, timeout=30).content  # no key: a plain link
                img = Image.open(io.BytesIO(body))
                img.load()  # decodes
                assert len(body) < len(original), (name_in, len(body), len(original))
                if name_in in jpeg_qualities:
                    assert img.format == "JPEG"
                    assert estimate_quality(img).quality == half(jpeg_qualities[name_in])

        # The notifier's archived CSV (read with the service's keys) is the same
        # table with the canonical, unsigned URLs.
        archived = asyncio.run(ObjectStore(settings_of(pipeline.env)).get(
            f"{accepted['request_id']}/output.csv"))
        stored = list(csv.reader(io.StringIO(archived.decode("utf-8-sig"))))
        assert stored == unsigned_table(table)

        hooked = poll(lambda: client.get(status_url).json()["webhook"],
                      lambda w: w["status"] == "delivered", timeout=60, what="the webhook")
        assert hooked["attempts"] == 1
    assert len(http_server.received) == 1
    note = http_server.received[0]
    assert note["path"] == "/hook"
    assert note["json"]["request_id"] == accepted["request_id"]
    assert note["json"]["status"] == "COMPLETED_WITH_ERRORS"
    assert note["json"]["output_csv_url"] == status["output_csv_url"]
    assert note["headers"]["Idempotency-Key"] == note["json"]["notification_id"]
    assert note["signature_error"] is None  # signed, and verified by the receiver
    assert note["json"]["notification_id"].startswith(accepted["request_id"])


def test_unknown_request_is_a_json_404(pipeline: Pipeline) -> None:
    resp = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/no-such-id")
    assert resp.status_code == 404
    assert resp.json()["code"] == "request_not_found"


def test_invalid_csv_reports_every_error(pipeline: Pipeline) -> None:
    body = "S. No.,Product Name,Input Image Urls\nx,Shoe,ftp://a/b.jpg\n2,,http://a/b.jpg\n"
    resp = pipeline.http.post(f"{pipeline.ingest_url}/api/v1/requests",
                      files={"file": ("bad.csv", body, "text/csv")})
    assert resp.status_code == 422
    found = {(e["line"], e["column"]) for e in resp.json()["errors"]}
    assert {(2, "S. No."), (2, "Input Image Urls"), (3, "Product Name")} <= found
