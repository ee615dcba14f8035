"""No URL's password or token reaches a log line or a dead-letter error."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.kafka import dead_letter_body
from shared.logs import setup_logging
from shared.redact import redact


@pytest.mark.parametrize(("text", "shown"), [
    ("no url here", "no url here"),
    ("POST https://bob:hunter2@hooks.example.com/done failed",
     "POST https://***@hooks.example.com/done failed"),
    ("get 'http://cdn.test/a.jpg?sig=abc123&w=200' -> 403",
     "get 'http://cdn.test/a.jpg?sig=…&w=…' -> 403"),
    ("webhook to http://u:p@127.0.0.1:9/h?token=t0k#frag, then http://x.test/?a",
     "webhook to http://***@127.0.0.1:9/h?token=…#frag, then http://x.test/?a"),
    ("s3://key:secret@bucket/x", "s3://***@bucket/x"),
    ("mailto-like user@example.com stays", "mailto-like user@example.com stays"),
])
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_every_log_line_and_traceback_is_redacted() -> None:
    root = logging.getLogger()
    kept, level = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        setup_logging("test")  # as every service does
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        log_lines(logging.getLogger("t"))
    finally:
        root.handlers[:] = kept
        root.setLevel(level)
    out = stream.getvalue()
    assert "h.test/x" in out and "hunter2" not in out and "t0k" not in out


def log_lines(log: logging.Logger) -> None:
    log.warning("webhook to %s failed", "https://bob:hunter2@h.test/x?token=t0k")
    try:
        raise OSError("cannot reach https://bob:hunter2@h.test/x?token=t0k")
    except OSError:
        log.exception("boom")


def test_a_dead_letters_error_is_redacted_but_its_value_kept() -> None:
    value = b'{"webhook_url": "https://bob:hunter2@h.test/x"}'
    body = json.loads(dead_letter_body(value, "s", "POST https://bob:hunter2@h.test/x: 500"))
    assert "hunter2" not in body["error"] and body["value"] == value.decode()
