"""Secrets never reach a log: after a request whose webhook URL carries a
password and a token, no service's log holds either, nor the API key, the
tenant's webhook secret or any secret the services were configured with."""

from __future__ import annotations

import time
import uuid

import pytest

from shared.tenants import parse_token
from tests.conftest import WEBHOOK_SECRET, HttpServer, Pipeline
from tests.flows import catalog, upload, wait_finished
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack
CONFIGURED = ("IMGPIPE_CALLBACK_SECRET", "IMGPIPE_S3_SECRET_KEY")


def test_no_secret_in_any_services_log(pipeline: Pipeline, http_server: HttpServer) -> None:
    tag, password, token = uuid.uuid4().hex[:8], f"pw{uuid.uuid4().hex}", uuid.uuid4().hex
    http_server.prefixes[f"{tag}/"] = (encode(photo((32, 24)), "JPEG", quality=80),
                                       "image/jpeg")
    http_server.prefixes[f"{tag}/bad"] = (b"not an image", "image/jpeg")  # logs a failure
    body, _ = catalog(http_server, tag, 2)
    body += f"3,Broken,{http_server.url(f'{tag}/bad.jpg')}?sig={token}\n"
    hook = http_server.url("hook").replace("://", f"://merchant:{password}@") + f"?token={token}"
    with pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body, hook)
        wait_finished(client, accepted["status_url"], within=120)
        shown = client.get(accepted["status_url"]).json()
        deadline = time.monotonic() + 60
        while client.get(accepted["status_url"]).json()["webhook"]["status"] != "delivered":
            assert time.monotonic() < deadline, "the webhook was never delivered"
            time.sleep(0.2)
    assert password not in str(shown) and token not in str(shown)
    [note] = [r for r in http_server.received if token in r["path"]]  # it did get through

    # The API key (its secret part too) and the tenant's webhook secret as well.
    parsed = parse_token(pipeline.key)
    assert parsed is not None
    api_secret = parsed[1]
    secrets = [password, token, pipeline.key, api_secret, WEBHOOK_SECRET,
               WEBHOOK_SECRET.removeprefix("whsec_"),
               *(pipeline.env[k] for k in CONFIGURED if pipeline.env.get(k))]
    assert len(secrets) == 6 + len(CONFIGURED)
    for svc in pipeline.running.items:
        assert svc.log_path is not None
        text = svc.log_path.read_text(errors="replace")
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{svc.name}'s log holds a secret ({len(leaked)} of them)"
    assert note["signature_error"] is None
