"""The upload size limit holds without a (valid) Content-Length."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.ingest.app import create_app
from services.ingest.limits import parse_content_length
from services.ingest.settings import Settings
from shared.tenants import Tenant
from tests.conftest import Pipeline

UPLOAD = "/api/v1/requests"
MIB = 1024 * 1024


def chunked_multipart(total: int, boundary: str) -> Iterator[bytes]:
    """A multipart CSV upload of about ``total`` bytes, streamed in 64 KiB chunks
    (an iterator body: httpx sends it chunked, with no Content-Length)."""
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n"
           "S. No.,Product Name,Input Image Urls\r\n").encode()
    row = b"1,A,https://img.example/" + b"a" * 1000 + b".jpg\r\n"
    chunk = row * 64
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.stack
def test_a_chunked_upload_over_the_limit_is_413(pipeline: Pipeline) -> None:
    boundary = uuid.uuid4().hex
    resp = pipeline.http.post(f"{pipeline.ingest_url}{UPLOAD}",
                      content=chunked_multipart(7 * MIB, boundary), timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert resp.status_code == 413, resp.text
    assert resp.json()["errors"][0]["code"] == "file_too_large"


@pytest.mark.stack
def test_413_comes_while_the_body_is_still_arriving(pipeline: Pipeline) -> None:
    """The server answers as soon as the count passes the limit: it does not wait
    for (or spool) the rest. The body here is never finished."""
    port = int(pipeline.ingest_url.rsplit(":", 1)[1])
    head = (b"POST /api/v1/requests HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + pipeline.key.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        sent = 0
        for part in chunked_multipart(5 * MIB + 256 * 1024, "b"):
            if part.startswith(b"\r\n--b--"):
                break  # withhold the end: without the limit the server would wait forever
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sent += len(part)
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"413", status_line


@pytest.mark.stack
def test_a_chunked_upload_under_the_limit_is_parsed(pipeline: Pipeline) -> None:
    boundary = uuid.uuid4().hex
    resp = pipeline.http.post(f"{pipeline.ingest_url}{UPLOAD}",
                      content=chunked_multipart(64 * 1024, boundary), timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    # Read whole and validated: the rows repeat serial 1, so the CSV check answers.
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["code"] == "serial_duplicate"


@pytest.mark.stack
def test_a_garbage_content_length_is_4xx_from_the_real_server(pipeline: Pipeline) -> None:
    port = int(pipeline.ingest_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/requests HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: lots\r\nConnection: close\r\n\r\n--b--\r\n")
        status_line = sock.makefile("rb").readline()
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


@pytest.mark.parametrize(("length", "status", "code"), [
    ("lots", 400, "bad_content_length"), ("-5", 400, "bad_content_length"),
    ("1e9", 400, "bad_content_length"), (str(10 * MIB), 413, "file_too_large")])
async def test_content_length_is_parsed_safely(length: str, status: int, code: str) -> None:
    app = create_app(Settings(max_upload_bytes=1000))
    app.state.deps = object()  # never reached: the limit answers first
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ingest") as client:
        resp = await client.post(UPLOAD, content=b"--b--\r\n", headers={
            "Content-Type": "multipart/form-data; boundary=b", "Content-Length": length})
    assert resp.status_code == status
    assert resp.json()["errors"][0]["code"] == code


class AnyKey:
    """Lets every call in (these tests are about the body, read after the key)."""

    async def tenant(self, token: str | None) -> Tenant:
        return Tenant("t", "k")


async def test_a_chunked_body_is_cut_off_at_the_limit_not_spooled_whole() -> None:
    app = create_app(Settings(max_upload_bytes=1000, max_active_requests=0))
    app.state.deps = object()  # never reached (no limit of requests in progress to count)
    app.state.auth = AnyKey()
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        for part in chunked_multipart(2 * MIB, "b"):
            consumed += len(part)
            yield part

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ingest") as client:
        resp = await client.post(UPLOAD, content=body(), headers={
            "Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["code"] == "file_too_large"
    assert consumed < 1000 + 64 * 1024 + 128 * 1024  # the limit plus one chunk or two


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), ("0", 0), (" 12 ", 12), ("lots", ValueError), ("-1", ValueError),
    ("+1", ValueError), ("1_000", ValueError), ("١٢", ValueError), ("", ValueError)])
def test_parse_content_length(raw: str | None, expected: int | type | None) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError):
            parse_content_length(raw)
    else:
        assert parse_content_length(raw) == expected


@pytest.mark.stack
def test_an_oversize_callback_is_refused_unread(pipeline: Pipeline) -> None:
    """Callbacks carry one image result: a big (or endless) body is cut off at
    64 KiB, before the signature is even looked at."""

    def endless() -> Iterator[bytes]:
        for _ in range(200):  # 12.8 MB if it were all read
            yield b"x" * 65536

    resp = pipeline.http.post(f"{pipeline.ingest_url}/api/v1/callbacks/image-processed",
                      content=endless(), timeout=60,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert "one image" in resp.json()["errors"][0]["message"]
