"""The upload API of the running ingest service (real stack, real HTTP)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from shared.products import page_id
from tests.conftest import HttpServer, Pipeline
from tests.flows import unsigned
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack
CORPUS = Path(__file__).resolve().parents[1] / "data" / "csv"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())
# Files whose expectations use non-default limits are covered by the unit tests.
DEFAULT_LIMIT_CASES = sorted(n for n, e in MANIFEST.items() if not e.get("limits"))


@contextmanager
def database(p: Pipeline) -> Iterator[Database[dict[str, Any]]]:
    """The pipeline's MongoDB database, for checks the APIs do not show."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(p.env["IMGPIPE_MONGO_URI"]) as client:
        yield client[p.env.get("IMGPIPE_MONGO_DB", "imgpipe")]


def upload(p: Pipeline, body: bytes | str, *, name: str = "p.csv", ctype: str = "text/csv",
           **kw: Any) -> httpx.Response:
    return p.http.post(f"{p.ingest_url}/api/v1/requests", files={"file": (name, body, ctype)},
                      timeout=60, **kw)


@pytest.mark.parametrize("name", DEFAULT_LIMIT_CASES)
def test_corpus_through_the_real_service(pipeline: Pipeline, name: str) -> None:
    expected = MANIFEST[name]
    resp = upload(pipeline, (CORPUS / name).read_bytes(), name=name)
    if expected["errors"]:
        assert resp.status_code == 422, resp.text
        body = resp.json()
        got = [[e["code"], e["line"]] for e in body["errors"]]
        assert got == expected["errors"]
        assert body["error_count"] == len(expected["errors"])
        assert all(e["message"] for e in body["errors"])
    else:
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert (body["product_count"], body["image_count"]) == (
            expected["products"], expected["images"])
        assert [[w["code"], w["line"]] for w in body["warnings"]] == expected["warnings"]


def test_rows_are_stored_in_order_and_visible_at_once(pipeline: Pipeline) -> None:
    csv = ("S. No.,Product Name,Input Image Urls\n"
           '2,B,"https://img.example/b1.jpg, https://img.example/b2.jpg"\n'
           "1,A,https://img.example/a1.jpg\n")
    resp = upload(pipeline, csv)
    assert resp.status_code == 202
    rid = resp.json()["request_id"]
    products = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}/products").json()
    assert [(p["serial"], p["name"], p["input_urls"]) for p in products] == [
        (2, "B", ["https://img.example/b1.jpg", "https://img.example/b2.jpg"]),
        (1, "A", ["https://img.example/a1.jpg"])]


def test_idempotency_key(pipeline: Pipeline) -> None:
    csv = "S. No.,Product Name,Input Image Urls\n1,A,https://img.example/a.jpg\n"
    key = {"Idempotency-Key": f"k-{time.time_ns()}"}
    first = upload(pipeline, csv, headers=key)
    again = upload(pipeline, csv, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["request_id"] == again.json()["request_id"]
    other = upload(pipeline, csv.replace("a.jpg", "b.jpg"), headers=key)
    assert other.status_code == 422  # the key was reused with another file
    assert other.headers["content-type"] == "application/problem+json"
    body = other.json()
    assert body["code"] == body["errors"][0]["code"] == "idempotency_key_reused"
    assert body["status"] == 422 and body["type"] == "urn:imgpipe:problem:idempotency_key_reused"


def test_wrong_content_type_is_415(pipeline: Pipeline) -> None:
    resp = upload(pipeline, b"\x89PNG\r\n", name="p.png", ctype="image/png")
    assert resp.status_code == 415
    assert "CSV" in resp.json()["errors"][0]["message"]
    raw = pipeline.http.post(f"{pipeline.ingest_url}/api/v1/requests", json={"a": 1})
    assert raw.status_code == 415


def test_oversize_upload_is_413(pipeline: Pipeline) -> None:
    row = "1,A,https://img.example/" + "a" * 1000 + ".jpg\n"
    resp = upload(pipeline, "S. No.,Product Name,Input Image Urls\n" + row * 6000)
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["code"] == "file_too_large"


@pytest.mark.parametrize("hook", ["http://169.254.169.254/latest", "ftp://example.com/x",
                                  "http://10.0.0.1/hook", "http://[::ffff:10.0.0.1]/x"])
def test_forbidden_webhook_is_422_before_anything_is_queued(pipeline: Pipeline,
                                                            hook: str) -> None:
    csv = "S. No.,Product Name,Input Image Urls\n1,A,https://img.example/a.jpg\n"
    resp = upload(pipeline, csv, data={"webhook_url": hook})
    assert resp.status_code == 422, resp.text
    err = resp.json()["errors"][0]
    assert err["column"] == "webhook_url" and err["message"]


def test_the_same_url_is_fetched_once(pipeline: Pipeline, http_server: HttpServer) -> None:
    http_server.files["same.jpg"] = (encode(photo(), "JPEG", quality=80), "image/jpeg")
    url = http_server.url("same.jpg")
    csv = f'S. No.,Product Name,Input Image Urls\n1,A,"{url},{url}"\n2,B,{url}\n'
    rid = upload(pipeline, csv).json()["request_id"]
    deadline = time.monotonic() + 120
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}").json()
        if status["status"] == "COMPLETED":
            break
        time.sleep(0.5)
    assert status["status"] == "COMPLETED", status
    assert http_server.hits["same.jpg"] == 1
    products = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}/products").json()
    outputs = [unsigned(u) for p in products for u in p["output_urls"]]
    assert len(outputs) == 3 and len(set(outputs)) == 1 and outputs[0]  # one object


def test_the_upload_page_and_cors(pipeline: Pipeline) -> None:
    page = pipeline.http.get(f"{pipeline.ingest_url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and "/api/v1/requests" in page.text
    # The page's own origin may read the status API; another site's may not.
    port = pipeline.ports.ingest
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        resp = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/x",
                                 headers={"Origin": origin})
        assert resp.headers.get("access-control-allow-origin") == origin
    for origin in ("http://127.0.0.1:1", "https://evil.example"):
        resp = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/x",
                                 headers={"Origin": origin})
        assert "access-control-allow-origin" not in resp.headers


def test_products_are_paged_in_input_order_across_page_boundaries(pipeline: Pipeline) -> None:
    rows = "".join(f"{i},P{i},https://img.example/{i}.jpg\n" for i in range(1, 201))
    resp = upload(pipeline, "S. No.,Product Name,Input Image Urls\n" + rows)
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request_id"]
    url = f"{pipeline.status_url}/api/v1/requests/{rid}/products"
    for offset, limit, expected in [(0, 3, [1, 2, 3]), (70, 20, list(range(71, 91))),
                                    (150, 100, list(range(151, 201))), (200, 5, [])]:
        got = pipeline.http.get(url, params={"offset": offset, "limit": limit}).json()
        assert [p["serial"] for p in got] == expected
    row = pipeline.http.get(url, params={"offset": 79, "limit": 1}).json()[0]
    assert (row["serial"], row["name"], row["input_urls"], len(row["output_urls"])) == (
        80, "P80", ["https://img.example/80.jpg"], 1)

    # A product page lost from the database is an error, never a shorter list.
    deadline = time.monotonic() + 60
    status_url = f"{pipeline.status_url}/api/v1/requests/{rid}"
    while pipeline.http.get(status_url).json()["published"] < 200:
        assert time.monotonic() < deadline, "the relay never published the request"
        time.sleep(0.2)
    with database(pipeline) as db:
        request = db["requests"].find_one({"_id": rid})
        assert request is not None
        pages = db["product_pages"]
        assert pages.delete_one({"_id": page_id(rid, request['page_rows'])}).deleted_count == 1
    broken = pipeline.http.get(url, params={"offset": 0, "limit": 1000})
    assert broken.status_code == 500
    assert broken.json()["code"] == "product_rows_missing"


def test_a_finished_request_missing_rows_gets_a_500_not_a_cut_off_csv(
        pipeline: Pipeline) -> None:
    rows = "".join(f"{i},P{i},https://img.invalid/{i}.jpg\n" for i in range(1, 4))
    resp = upload(pipeline, "S. No.,Product Name,Input Image Urls\n" + rows)
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request_id"]
    status: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while status.get("status") not in ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
        status = pipeline.http.get(f"{pipeline.status_url}/api/v1/requests/{rid}").json()
    csv_url = f"{pipeline.status_url}/api/v1/requests/{rid}/output.csv"
    assert pipeline.http.get(csv_url).status_code == 200
    with database(pipeline) as db:
        assert db["product_pages"].delete_one({"_id": page_id(rid, 0)}).deleted_count == 1
    broken = pipeline.http.get(csv_url)
    assert broken.status_code == 500
    assert broken.json()["code"] == "product_rows_missing"
