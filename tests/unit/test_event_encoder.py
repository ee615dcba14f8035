"""The ingest fast path for image.requested events: byte-identical to the model."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import (
    ImageRequested,
    ImageRequestedEncoder,
    _uuid_str,
    decode,
    decode_as,
    event_key,
    image_id_for,
)

NAMES = ["Product 1", 'He said "hi"', "back\\slash", "tab\tnew\nline\r", "ctl \x00\x01\x1f\x7f",
         "é ü ß 中文 日本語", "emoji 🙂🚀", "line sep \u2028 para \u2029", "</script>", "", " x "]
URLS = ["https://images.example.com/p1/0.jpg", 'https://x.test/a"b.png',
        "https://x.test/ünïcode/图片.jpg?q=1&r=2", "https://x.test/%20space\\", "http://x/\u2028"]


ROW = 41


def _model_bytes(value: bytes, request_id: str, serial: int, name: str, position: int,
                 url: str) -> bytes:
    """What the model encodes for the same event, with the fast path's
    event_id and occurred_at (the only fields that are not deterministic)."""
    sent = json.loads(value)
    return ImageRequested(request_id=request_id, image_id=image_id_for(request_id, url),
                          serial=serial, row=ROW, product_name=name, position=position,
                          url=url, event_id=sent["event_id"],
                          occurred_at=sent["occurred_at"]).encode()


def _check(request_id: str, serial: int, name: str, urls: list[str],
           occurred_at: datetime | None = None) -> None:
    encoded = ImageRequestedEncoder(request_id).encode_product(serial, ROW, name, urls,
                                                               occurred_at)
    assert len(encoded) == len(urls)
    for position, ((key, value), url) in enumerate(zip(encoded, urls, strict=True)):
        assert value == _model_bytes(value, request_id, serial, name, position, url)
        event = decode(value)
        assert isinstance(event, ImageRequested)
        assert (event.request_id, event.serial, event.row, event.product_name, event.position,
                event.url) == (request_id, serial, ROW, name, position, url)
        assert event.image_id == image_id_for(request_id, url)
        assert key == event_key(event) == event.image_id.encode()
        assert uuid.UUID(event.event_id).version == 4
        assert str(uuid.UUID(event.event_id)) == event.event_id
        if occurred_at is not None:
            assert event.occurred_at == occurred_at


@pytest.mark.parametrize("name", NAMES)
def test_byte_identical_to_the_model(name: str) -> None:
    _check(str(uuid.uuid4()), 7, name, URLS)


@pytest.mark.parametrize("occurred_at", [
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: pydantic drops them
    datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime.now(UTC),
])
def test_occurred_at_formatted_like_pydantic(occurred_at: datetime) -> None:
    _check("r-1", 1, "n", URLS[:2], occurred_at)


@pytest.mark.parametrize("request_id", ["r", 'quote"d', "ünï\\", str(uuid.uuid4())])
def test_unusual_request_ids(request_id: str) -> None:
    _check(request_id, 10**12, "x", URLS)


@settings(max_examples=200, deadline=None)
@given(request_id=st.text(min_size=1, max_size=40),
       serial=st.integers(min_value=0, max_value=2**53),
       name=st.text(max_size=60),
       urls=st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=5))
def test_byte_identical_for_arbitrary_text(request_id: str, serial: int, name: str,
                                           urls: list[str]) -> None:
    # Lone surrogates cannot come out of the strict CSV decoder (nor be sent).
    for text in (request_id, name, *urls):
        try:
            text.encode()
        except UnicodeEncodeError:
            return
    _check(request_id, serial, name, urls)


def test_duplicate_urls_share_the_image_id_and_key() -> None:
    encoded = ImageRequestedEncoder("r").encode_product(1, 0, "n", ["u", "v", "u"])
    assert encoded[0][0] == encoded[2][0] != encoded[1][0]
    ids = {json.loads(v)["event_id"] for _, v in encoded}
    assert len(ids) == 3


def test_uuid_formatting_equals_the_uuid_module() -> None:
    for _ in range(2000):
        raw = os.urandom(16)
        for version in (4, 5):
            assert _uuid_str(raw.hex(), str(version)) == str(uuid.UUID(bytes=raw, version=version))


def test_image_id_equals_uuid5() -> None:
    encoder = ImageRequestedEncoder("req-1")
    for url in URLS:
        assert encoder.image_id(url) == image_id_for("req-1", url)
        assert encoder.image_id(url) == str(uuid.uuid5(
            uuid.UUID("6a1f0d3e-8a57-4c1e-9d5e-2f0b7c9e4a11"), f"req-1\n{url}"))


def test_a_range_of_positions_is_encoded_with_their_own_positions() -> None:
    encoded = ImageRequestedEncoder("r").encode_product(3, 2, "n", URLS, start=1, stop=4)
    events = [decode_as(v, ImageRequested) for _, v in encoded]
    assert [(e.row, e.position, e.url) for e in events] == [(2, i, URLS[i]) for i in (1, 2, 3)]
    assert ImageRequestedEncoder("r").encode_product(3, 2, "n", URLS, start=2, stop=2) == []


def test_also_and_covered_positions_are_encoded_like_the_model() -> None:
    """A leader lists the positions it covers (``also``); covered positions of
    the range get no event of their own."""
    rid = str(uuid.uuid4())
    refs = [(5, 6, 0), (9, 10**12, 3), (2**31, 2**53, 49)]
    encoded = ImageRequestedEncoder(rid).encode_product(
        7, ROW, "n", URLS, covered={1, 3}, also={0: refs, 2: refs[:1]})
    events = [decode_as(v, ImageRequested) for _, v in encoded]
    assert [e.position for e in events] == [0, 2, 4]
    assert [[(a.row, a.serial, a.position) for a in e.also] for e in events] == [
        refs, refs[:1], []]
    for (_, value), event in zip(encoded, events, strict=True):
        assert value == event.encode()  # byte-identical, ``also`` included
