"""Private outputs on the real stack: the bucket answers 403 to anyone without a
signature; the links the status API hands out (products, live output CSV) are
presigned and open the images; a link stops working once its lifetime is up."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from shared.links import OutputLinks
from shared.storage import ObjectStore
from tests.conftest import HttpServer, Pipeline
from tests.flows import catalog, settings_of, unsigned, upload, wait_finished
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack


def anonymous_status(url: str) -> int:
    """What a GET without any credentials or signature gets."""
    return httpx.get(url, timeout=10).status_code


def assert_opens_an_image(link: str) -> None:
    """A link opens as it is, with no API key (a browser's or a shop's GET)."""
    resp = httpx.get(link, timeout=30)
    assert resp.status_code == 200, (link, resp.status_code, resp.text[:300])
    img = Image.open(io.BytesIO(resp.content))
    img.load()  # decodes
    assert img.format == "JPEG"


def served(http_server: HttpServer, rows: int) -> str:
    """A CSV of ``rows`` products whose images (JPEGs) ``http_server`` serves."""
    tag = uuid.uuid4().hex[:8]
    http_server.prefixes[f"{tag}/"] = (encode(photo((120, 90)), "JPEG", quality=85),
                                       "image/jpeg")
    return catalog(http_server, tag, rows)[0]


def test_outputs_are_private_and_handed_out_as_presigned_links(
        pipeline: Pipeline, http_server: HttpServer) -> None:
    body = served(http_server, 2)
    settings = settings_of(pipeline.env)
    with pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body)
        rid, status_url = accepted["request_id"], accepted["status_url"]
        status = wait_finished(client, status_url, within=120)
        assert status["status"] == "COMPLETED", status
        # The output CSV link is the status API's, not the S3 object.
        assert status["output_csv_url"] == f"{status_url}/output.csv"

        products = client.get(f"{status_url}/products").json()
        links = [u for p in products for u in p["output_urls"]]
        assert len(links) == 2
        for link in links:
            q = parse_qs(urlsplit(link).query)
            assert q["X-Amz-Expires"] == [str(settings.output_link_seconds)]
            assert_opens_an_image(link)
            # The object itself, without the signature: the bucket is private.
            assert anonymous_status(unsigned(link)) == 403

        live = client.get(status["output_csv_url"])
        assert live.status_code == 200, live.text
        rows = list(csv.reader(io.StringIO(live.content.decode("utf-8-sig"))))
        live_links = [r[3] for r in rows[1:]]
        assert [unsigned(u) for u in live_links] == [unsigned(u) for u in links]
        for link in live_links:
            assert "X-Amz-Signature=" in link
            assert_opens_an_image(link)

    # The archived output CSV: private too; it keeps the canonical URLs.
    archived_url = settings.public_object_url(f"{rid}/output.csv")
    assert anonymous_status(archived_url) == 403
    archived = asyncio.run(ObjectStore(settings).get(f"{rid}/output.csv"))
    stored = list(csv.reader(io.StringIO(archived.decode("utf-8-sig"))))
    assert [r[3] for r in stored[1:]] == [unsigned(u) for u in links]


def test_links_lapse_and_can_be_signed_for_another_host(
        pipeline: Pipeline, http_server: HttpServer) -> None:
    body = served(http_server, 1)
    settings = settings_of(pipeline.env)
    with pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body)
        wait_finished(client, accepted["status_url"], within=120)
        [product] = client.get(f"{accepted['status_url']}/products").json()
        canonical = unsigned(product["output_urls"][0])

        # Signed for the host clients use (here: localhost for the same server).
        port = settings.s3_endpoint.rsplit(":", 1)[1]
        public = settings.model_copy(
            update={"s3_public_endpoint": f"http://localhost:{port}"})
        other = OutputLinks(public).link(canonical)
        assert other is not None and other.startswith(f"http://localhost:{port}/")
        assert_opens_an_image(other)

        short = OutputLinks(settings, lifetime_seconds=2).link(canonical)
        assert short is not None
        minted = time.monotonic()
        assert parse_qs(urlsplit(short).query)["X-Amz-Expires"] == ["2"]
        # SigV4 dates are whole seconds: the link opens for at least 1 s, at most 2 s.
        assert_opens_an_image(short)
        deadline = minted + 8  # the lifetime plus slack for a loaded machine
        answer = httpx.get(short, timeout=30)
        while answer.status_code != 403 and time.monotonic() < deadline:
            time.sleep(0.25)
            answer = httpx.get(short, timeout=30)
        assert answer.status_code == 403, "the 2 s link still opens after 8 s"
        assert "expired" in answer.text.lower(), answer.text[:300]
        # A fresh link for the same object works again.
        assert_opens_an_image(OutputLinks(settings).link(canonical) or "")
