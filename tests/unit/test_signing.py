from __future__ import annotations

import hashlib
import hmac

import pytest

from shared.signing import SignatureInvalid, sign, verify

BODY = b'{"request_id": "r1"}'


def test_a_fresh_signature_verifies() -> None:
    verify("s3cret", BODY, sign("s3cret", BODY))


@pytest.mark.parametrize("header", [
    None, "", "v1=abc", "t=notanumber,v1=abc", sign("other", BODY),
    sign("s3cret", BODY + b" "),
])
def test_bad_signatures_are_refused(header: str | None) -> None:
    with pytest.raises(SignatureInvalid):
        verify("s3cret", BODY, header)


def test_old_signatures_are_refused() -> None:
    header = sign("s3cret", BODY, timestamp=1_000_000)
    with pytest.raises(SignatureInvalid, match="window"):
        verify("s3cret", BODY, header, now=1_000_000 + 301)
    verify("s3cret", BODY, header, now=1_000_000 + 299)


def test_known_vector() -> None:
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", b"{}", 1_700_000_000) == f"t=1700000000,v1={expected}"
