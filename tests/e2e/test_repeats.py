"""A URL repeated within a request, end to end on the real local stack: fetched
and encoded once, its result recorded at every position that names it."""

from __future__ import annotations

import csv
import io

import pytest

from tests.conftest import HttpServer, Pipeline
from tests.flows import output_rows, upload, wait_finished
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack
ROWS = 2000
DISTINCT = {0: "d0.jpg", 700: "d700.jpg", 1999: "d1999.jpg"}  # row -> a URL of its own
GONE = (10, 20, 30)  # rows that also name a URL answering 404


def test_a_repeated_url_is_fetched_once_and_recorded_at_every_position(
        pipeline: Pipeline, http_server: HttpServer) -> None:
    http_server.files["same.jpg"] = (encode(photo((320, 240)), "JPEG", quality=90),
                                     "image/jpeg")
    for i, name in enumerate(DISTINCT.values()):
        http_server.files[name] = (encode(photo((300 + 8 * i, 200)), "JPEG", quality=80),
                                   "image/jpeg")
    u = http_server.url
    inputs: list[list[str]] = []
    for row in range(ROWS):
        urls = [u("same.jpg")]
        if row in DISTINCT:
            urls.append(u(DISTINCT[row]))
        if row in GONE:
            urls.insert(0, u("gone.jpg"))
        inputs.append(urls)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    writer.writerows([row + 1, f"Item {row}", ", ".join(urls)] for row, urls in enumerate(inputs))
    total = sum(len(urls) for urls in inputs)

    with pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, out.getvalue())
        assert accepted["image_count"] == total == ROWS + len(DISTINCT) + len(GONE)
        status = wait_finished(client, accepted["status_url"], within=240)
        assert status["status"] == "COMPLETED_WITH_ERRORS", status
        assert (status["succeeded"], status["failed"], status["processed"]) == (
            ROWS + len(DISTINCT), len(GONE), total)
        table = output_rows(client, accepted["status_url"])

    assert table[0][-1] == "Output Image Urls" and len(table) == ROWS + 1
    outputs = [[x.strip() for x in row[3].split(",")] for row in table[1:]]
    assert [[x.strip() for x in row[2].split(",")] for row in table[1:]] == inputs
    same = {o for urls, outs in zip(inputs, outputs, strict=True)
            for url, o in zip(urls, outs, strict=True) if url == u("same.jpg")}
    assert len(same) == 1 and next(iter(same)).startswith("http")  # every position, one output
    for row in GONE:
        assert outputs[row][0] == ""  # the failed URL: empty at each of its positions
    distinct_outputs = [outputs[row][-1] for row in DISTINCT]
    assert all(o.startswith("http") for o in distinct_outputs)
    assert len(set(distinct_outputs) | same) == len(DISTINCT) + 1
    assert http_server.hits["same.jpg"] == 1  # 2,000 positions, one fetch
    assert http_server.hits["gone.jpg"] == 1  # a 404 is not retried
    assert all(http_server.hits[name] == 1 for name in DISTINCT.values())
