"""Standard Webhooks signatures: ours verified by the specification's reference
library (``standardwebhooks``) and the reference's verified by ours."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from deploy.run import webhook_secret
from services.notifier.settings import Settings
from shared import webhook_signing as ws
from shared.signing import SignatureInvalid

BODY = json.dumps({"event": "request.completed", "request_id": "r-1"}).encode()


def test_the_reference_library_verifies_our_signature() -> None:
    secret = ws.new_secret()
    headers = ws.sign_headers([secret], "msg_1", BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(ws.new_secret()).verify(BODY, headers)


def test_we_verify_the_reference_librarys_signature() -> None:
    secret, now = ws.new_secret(), int(time.time())
    sig = Webhook(secret).sign("msg_2", datetime.fromtimestamp(now, UTC), BODY.decode())
    headers = {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(now), "Webhook-Signature": sig}
    ws.verify([secret], headers, BODY)  # header names in any case
    assert ws.sign_headers([secret], "msg_2", BODY, now)[ws.SIGNATURE] == sig


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "signature"])
def test_a_tampered_message_is_refused(change: str) -> None:
    secret, now = ws.new_secret(), int(time.time())
    headers, body = ws.sign_headers([secret], "msg_3", BODY, now), BODY
    if change == "body":
        body = BODY.replace(b"r-1", b"r-2")
    elif change == "id":
        headers[ws.ID] = "msg_4"
    elif change == "timestamp":
        headers[ws.TIMESTAMP] = str(now + 1)
    else:
        headers[ws.SIGNATURE] = headers[ws.SIGNATURE][:-4] + "AAA="
    with pytest.raises(SignatureInvalid, match="no signature matches"):
        ws.verify([secret], headers, body)


def test_an_old_or_future_timestamp_is_refused_as_a_replay() -> None:
    secret, now = ws.new_secret(), time.time()
    old = ws.sign_headers([secret], "msg_5", BODY, int(now) - 301)
    with pytest.raises(SignatureInvalid, match="outside the allowed window"):
        ws.verify([secret], old, BODY, now=now)
    ws.verify([secret], old, BODY, now=now - 2)  # the same message, in its window
    ahead = ws.sign_headers([secret], "msg_5", BODY, int(now) + 301)
    with pytest.raises(SignatureInvalid, match="outside the allowed window"):
        ws.verify([secret], ahead, BODY, now=now)


def test_missing_headers_are_refused() -> None:
    secret = ws.new_secret()
    headers = ws.sign_headers([secret], "msg_6", BODY)
    for name in (ws.ID, ws.TIMESTAMP, ws.SIGNATURE):
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(SignatureInvalid, match="missing"):
            ws.verify([secret], partial, BODY)


def test_during_a_rotation_a_receiver_with_either_secret_accepts() -> None:
    new, old = ws.new_secret(), ws.new_secret()
    headers = ws.sign_headers([new, old], "msg_7", BODY)
    assert len(headers[ws.SIGNATURE].split()) == 2
    for secret in (new, old):
        ws.verify([secret], headers, BODY)
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(SignatureInvalid):
        ws.verify([ws.new_secret()], headers, BODY)


@pytest.mark.parametrize(("secret", "why"), [
    ("whsec_not*base64", "base64"), ("whsec_c2hvcnQ=", "at least 24 bytes")])
def test_a_bad_secret_is_refused_with_how_to_fix_it(secret: str, why: str) -> None:
    with pytest.raises(ws.SecretInvalid, match=why):
        ws.parse_secrets(secret)


def test_the_notifier_checks_its_fallback_secrets_at_start() -> None:
    assert Settings(webhook_secret="").webhook_secrets() == []  # tenants have their own
    new, old = ws.new_secret(), ws.new_secret()
    assert Settings(webhook_secret=f"{new} {old}").webhook_secrets() == [new, old]
    assert Settings(webhook_secret=f"{new},{old}").webhook_secrets() == [new, old]
    with pytest.raises(ValidationError, match="base64"):
        Settings(webhook_secret="whsec_***")


def test_make_run_keeps_one_secret_across_restarts(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGPIPE_WEBHOOK_SECRET", raising=False)
    first = webhook_secret(tmp_path / "data")
    assert ws.parse_secrets(first) == [first]
    assert webhook_secret(tmp_path / "data") == first
    assert (tmp_path / "data" / "webhook_secret").stat().st_mode & 0o077 == 0  # owner only
    given = ws.new_secret()
    monkeypatch.setenv("IMGPIPE_WEBHOOK_SECRET", given)
    assert webhook_secret(tmp_path / "data") == given


