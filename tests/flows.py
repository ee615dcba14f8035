"""What a client does, for tests that drive a running pipeline: upload a CSV of
one image per row, wait until the request is finished, check the output CSV."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import httpx

from shared.csvtable import URL_SEPARATOR
from shared.requests import TERMINAL_STATUSES
from shared.settings import CommonSettings
from tests.conftest import HttpServer


def settings_of(env: dict[str, str]) -> CommonSettings:
    """The settings a service started with ``env`` (IMGPIPE_* variables) has."""
    fields: dict[str, Any] = {k.removeprefix("IMGPIPE_").lower(): v for k, v in env.items()
                              if k.startswith("IMGPIPE_")}
    return CommonSettings(**fields)


def unsigned(url: str) -> str:
    """A handed-out link without its query string (a presigned link's signature):
    the canonical object URL stored for it."""
    return url.split("?", 1)[0]


def unsigned_table(rows: list[list[str]]) -> list[list[str]]:
    """An output CSV's rows (header first) with its output links unsigned: the
    table the notifier archives, with canonical URLs."""
    return rows[:1] + [[*r[:3], URL_SEPARATOR.join(unsigned(u.strip()) for u in r[3].split(","))]
                       for r in rows[1:]]


def catalog(http_server: HttpServer, tag: str, rows: int) -> tuple[str, list[str]]:
    """A CSV of ``rows`` products, one image each (served under ``tag/``), and its URLs."""
    urls = [http_server.url(f"{tag}/{i}.jpg") for i in range(1, rows + 1)]
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f"{i},Item {i},{url}" for i, url in enumerate(urls, start=1)]
    return "\n".join(lines) + "\n", urls


def upload(client: httpx.Client, ingest_url: str, body: str,
           webhook_url: str | None = None) -> dict[str, Any]:
    resp = client.post(f"{ingest_url}/api/v1/requests",
                       files={"file": ("products.csv", body, "text/csv")},
                       data={"webhook_url": webhook_url} if webhook_url else {})
    assert resp.status_code == 202, resp.text
    accepted: dict[str, Any] = resp.json()
    return accepted


def wait_finished(client: httpx.Client, status_url: str, *, within: float) -> dict[str, Any]:
    """Poll the status API (bounded) until the request is finished."""
    deadline = time.monotonic() + within
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = client.get(status_url).json()
        if last.get("status") in TERMINAL_STATUSES and last.get("output_csv_url"):
            return last
        time.sleep(0.5)
    raise AssertionError(f"the request did not finish within {within:.0f}s: {last}")


def output_rows(client: httpx.Client, status_url: str) -> list[list[str]]:
    """The output CSV's rows (header first), as the status API serves it, with
    its output links unsigned (presigned links differ by when they were minted,
    so two downloads compare equal only without the signatures)."""
    resp = client.get(f"{status_url}/output.csv")
    assert resp.status_code == 200, resp.text
    return unsigned_table(list(csv.reader(io.StringIO(resp.content.decode("utf-8-sig")))))


def assert_complete_in_order(rows: list[list[str]], urls: list[str]) -> None:
    """One row per input URL, in input order, each with an output URL."""
    assert rows[0][-1] == "Output Image Urls"
    assert [r[2] for r in rows[1:]] == urls
    assert all(r[3].startswith("http") for r in rows[1:]), [r for r in rows[1:] if not r[3]]


async def read_topic(bootstrap: str, topic: str, *, idle: float = 2.0) -> list[bytes]:
    """Every value on a topic, from the beginning, until it has been idle ``idle`` s."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [found] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in found["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last = time.monotonic()
        while time.monotonic() - last < idle:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                values += [r.value for r in records if r.value is not None]
                last = time.monotonic()
    finally:
        await consumer.stop()
    return values
