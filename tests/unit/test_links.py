"""Output links: stored URLs of our bucket become presigned links, others stay."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from pydantic import ValidationError

from shared.links import OutputLinks, output_csv_link
from shared.settings import CommonSettings

KEYS = {"s3_access_key": "AKIDEXAMPLE", "s3_secret_key": "wJalrXUtnFEMI/K7MDENG"}


def settings(**extra: Any) -> CommonSettings:
    # A closed port: signing must not need the server at all.
    fields: dict[str, Any] = {"s3_endpoint": "127.0.0.1:1", "output_bucket": "outs",
                              "output_link_seconds": 3600, **KEYS, **extra}
    return CommonSettings(**fields)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Presigning makes no request (the region is configured): any would fail here."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("presigning made an HTTP request")
    monkeypatch.setattr(urllib3.PoolManager, "urlopen", refuse)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_our_url_becomes_a_presigned_link_with_the_configured_lifetime() -> None:
    s = settings()
    stored = s.public_object_url("req-1/abc.jpg")
    assert stored == "http://127.0.0.1:1/outs/req-1/abc.jpg"  # still what is stored
    link = OutputLinks(s).link(stored)
    assert link is not None and link.split("?", 1)[0] == stored
    q = query(link)
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert q["X-Amz-Expires"] == "3600"
    assert q["X-Amz-Credential"].startswith("AKIDEXAMPLE/")
    assert "/us-east-1/s3/aws4_request" in q["X-Amz-Credential"]
    assert len(q["X-Amz-Signature"]) == 64
    assert "wJalrXUtnFEMI" not in link  # the secret key signs, it is never in the link


def test_links_are_signed_for_the_public_endpoint() -> None:
    s = settings(s3_public_endpoint="https://files.example.com/")
    links = OutputLinks(s, lifetime_seconds=2)
    link = links.link(s.public_object_url("r/x.png"))
    assert link is not None
    assert link.startswith("https://files.example.com/outs/r/x.png?")
    assert query(link)["X-Amz-Expires"] == "2"
    # An older stored URL on the service endpoint is ours too.
    assert links.key_of("http://127.0.0.1:1/outs/r/y.png") == "r/y.png"


def test_a_custom_canonical_base_is_recognised() -> None:
    s = settings(public_base_url="https://cdn.example/outputs/")
    link = OutputLinks(s).link("https://cdn.example/outputs/r/z.jpg")
    assert link is not None and link.startswith("http://127.0.0.1:1/outs/r/z.jpg?X-Amz-")


@pytest.mark.parametrize("url", [
    "https://processed.example/a.jpg",  # an external service's own output
    "http://127.0.0.1:1/other-bucket/r/a.jpg",
    "http://127.0.0.1:1/outs/",  # the bucket itself, no object
    "http://127.0.0.1:1/outs/r/a.jpg?X-Amz-Signature=abc",  # already signed elsewhere
])
def test_any_other_url_is_handed_out_unchanged(url: str) -> None:
    assert OutputLinks(settings()).link(url) == url


def test_none_stays_none_in_order() -> None:
    s = settings()
    got = OutputLinks(s).links([None, "https://ext/a.jpg", s.public_object_url("r/b.jpg")])
    assert got[0] is None and got[1] == "https://ext/a.jpg"
    assert got[2] is not None and "X-Amz-Signature=" in got[2]


def test_the_output_csv_link_is_the_status_apis_once_archived() -> None:
    s = settings(status_base_url="https://status.example/")
    assert output_csv_link(s, "r1", None) is None  # not archived yet
    assert output_csv_link(s, "r1", "http://127.0.0.1:1/outs/r1/output.csv") == \
        "https://status.example/api/v1/requests/r1/output.csv"


@pytest.mark.parametrize("seconds", [0, -1, 604801])
def test_the_lifetime_is_bounded_by_sigv4(seconds: int) -> None:
    with pytest.raises(ValidationError, match="output_link_seconds"):
        settings(output_link_seconds=seconds)


@pytest.mark.parametrize("endpoint", ["files.example.com", "ftp://files.example.com",
                                      "https://files.example.com/s3"])
def test_the_public_endpoint_is_a_scheme_and_host(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="IMGPIPE_S3_PUBLIC_ENDPOINT"):
        settings(s3_public_endpoint=endpoint)


def test_the_lifetime_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_OUTPUT_LINK_SECONDS", "120")
    assert CommonSettings().output_link_seconds == 120
    monkeypatch.delenv("IMGPIPE_OUTPUT_LINK_SECONDS")
    assert CommonSettings().output_link_seconds == 86400
