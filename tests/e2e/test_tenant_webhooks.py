"""A tenant's webhooks are signed with its own secret, made with its first
key, and rotated by the operator CLI: signed with both secrets during the
rotation, with the new one alone after it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from shared import webhook_signing
from shared.signing import SignatureInvalid
from tests.conftest import WEBHOOK_SECRET, HttpServer, Pipeline, keys_cli
from tests.flows import catalog, upload
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack


def delivered(pipeline: Pipeline, key: str, http_server: HttpServer, tag: str
              ) -> dict[str, Any]:
    """Upload a one-image request with a webhook; the webhook it got."""
    body, _ = catalog(http_server, tag, 1)
    with pipeline.client(key, timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body, http_server.url(f"hook/{tag}"))
        deadline = time.monotonic() + 90
        while True:
            got = [r for r in http_server.received if r["path"] == f"/hook/{tag}"]
            if got:
                assert got[0]["json"]["request_id"] == accepted["request_id"]
                return got[0]
            assert time.monotonic() < deadline, client.get(accepted["status_url"]).json()
            time.sleep(0.2)


def verifies(note: dict[str, Any], secret: str) -> bool:
    try:
        webhook_signing.verify([secret], note["headers"], note["body"])
    except SignatureInvalid:
        return False
    return True


def test_a_tenants_webhooks_use_its_own_secret_through_a_rotation(
        pipeline: Pipeline, http_server: HttpServer) -> None:
    http_server.expect_unsigned = True  # it knows the pipeline's secret, not this tenant's
    tag = uuid.uuid4().hex[:8]
    http_server.prefixes[f"{tag}"] = (encode(photo((32, 24)), "JPEG", quality=80),
                                      "image/jpeg")
    made = pipeline.new_key(webhook_secret="")  # a tenant with a secret made for it
    first = made["webhook_secret"]
    assert webhook_signing.parse_secrets(first) == [first]

    note = delivered(pipeline, made["key"], http_server, f"{tag}a")
    assert verifies(note, first) and not verifies(note, WEBHOOK_SECRET)

    rotated = keys_cli(pipeline.env, "rotate-webhook-secret", "--tenant", made["tenant"])
    assert rotated.returncode == 0, rotated.stderr
    [second] = [w for w in rotated.stdout.split() if w.startswith("whsec_")]
    note = delivered(pipeline, made["key"], http_server, f"{tag}b")
    assert verifies(note, first) and verifies(note, second)  # receivers move over
    assert len(note["headers"]["webhook-signature"].split()) == 2

    assert keys_cli(pipeline.env, "finish-rotation", "--tenant", made["tenant"]).returncode == 0
    note = delivered(pipeline, made["key"], http_server, f"{tag}c")
    assert verifies(note, second) and not verifies(note, first)
