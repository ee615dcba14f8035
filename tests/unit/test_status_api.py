"""What the status API shows of a request's webhook URL."""

from __future__ import annotations

import pytest

from shared.redact import mask_url


@pytest.mark.parametrize(("url", "shown"), [
    (None, None),
    ("", ""),
    ("https://hooks.example.com/done", "https://hooks.example.com/done"),
    ("https://hooks.example.com/done?token=s3cret&x=1", "https://hooks.example.com/done?…"),
    ("http://hooks.example.com:8080/a/b?k=v#frag", "http://hooks.example.com:8080/a/b?…"),
    ("https://user:pw@hooks.example.com/x", "https://hooks.example.com/x"),
    ("http://[2001:db8::1]:9000/h?sig=abc", "http://[2001:db8::1]:9000/h?…"),
    ("http://[::1/x?t=1", "…"),  # unparseable: show nothing of it
])
def test_mask_url(url: str | None, shown: str | None) -> None:
    assert mask_url(url) == shown
    if url and shown:
        assert "s3cret" not in shown and "pw" not in shown and "sig" not in shown
