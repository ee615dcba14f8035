"""Golden payloads: the wire format of every event, pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import InvalidInputError
from shared.events import (
    ImageDone,
    ImageRequested,
    RequestCompleted,
    RequestCreated,
    decode,
    decode_as,
    event_key,
    image_id_for,
)
from shared.kafka import dead_letter_body
from shared.topics import Topic, all_topics

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "events"
KINDS = {"request.created": RequestCreated, "image.requested": ImageRequested,
         "image.done": ImageDone, "request.completed": RequestCompleted}


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_golden_payload_decodes_and_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    event = decode(raw)
    assert type(event) is KINDS[json.loads(raw)["event_type"]]
    again = json.loads(event.encode())
    original = json.loads(raw)
    assert set(again) == set(original), "a field was added or removed: update the golden file"
    assert decode(event.encode()) == event


def test_every_event_kind_has_a_golden_payload() -> None:
    seen = {json.loads(p.read_bytes())["event_type"] for p in GOLDEN.glob("*.json")}
    assert seen == set(KINDS)


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b'{"event_type": "nope"}',
                                 b'{"event_type": "image.done", "schema_version": 2}'])
def test_invalid_payloads_raise_invalid_input(raw: bytes) -> None:
    with pytest.raises(InvalidInputError) as err:
        decode(raw)
    assert err.value.code == "invalid_event"


def test_image_ids_are_shared_by_identical_urls_only() -> None:
    a = image_id_for("r1", "http://x/a.jpg")
    assert a == image_id_for("r1", "http://x/a.jpg")
    assert a != image_id_for("r1", "http://x/b.jpg")
    assert a != image_id_for("r2", "http://x/a.jpg")


def test_partition_keys() -> None:
    golden = {p.stem: decode(p.read_bytes()) for p in GOLDEN.glob("*.json")}
    req = golden["image.requested.v1"]
    assert isinstance(req, ImageRequested)
    assert event_key(req) == req.image_id.encode()  # spreads a request over partitions
    done = golden["image.done.v1"]
    assert event_key(done) == done.request_id.encode()  # one request, one aggregator


def test_topic_names_are_prefixed_and_unique() -> None:
    names = all_topics("imgpipe")
    assert len(set(names)) == len(Topic)
    assert Topic.IMAGE_DONE.full("imgpipe") == "imgpipe.image.done.v1"


def test_decode_as_returns_the_wanted_type_and_refuses_others() -> None:
    raw = (GOLDEN / "image.done.v1.json").read_bytes()
    assert isinstance(decode_as(raw, ImageDone), ImageDone)
    with pytest.raises(InvalidInputError) as err:
        decode_as(raw, RequestCompleted)
    assert err.value.code == "unexpected_event"
    assert "image.done" in err.value.message
    with pytest.raises(InvalidInputError) as err:
        decode_as(b"not json", ImageDone)
    assert err.value.code == "invalid_event"


def test_dead_letter_envelope() -> None:
    body = json.loads(dead_letter_body(b"\xffabc", "aggregator:t", ValueError("bad")))
    assert body == {"source": "aggregator:t", "error": "bad", "value": "\ufffdabc"}
    assert json.loads(dead_letter_body(None, "s", "e"))["value"] == ""


@pytest.mark.parametrize("kind", ["image.requested", "image.done"])
def test_also_lists_the_other_positions_of_the_url(kind: str) -> None:
    event = decode((GOLDEN / f"{kind}.also.v1.json").read_bytes())
    assert isinstance(event, ImageRequested | ImageDone)
    assert [(a.row, a.serial, a.position) for a in event.also] == [(1, 2, 0), (4, 5, 1)]
    assert json.loads(event.encode())["also"] == [
        {"row": 1, "serial": 2, "position": 0, "product_name": "SKU2"},
        {"row": 4, "serial": 5, "position": 1, "product_name": "SKU5"}]


@pytest.mark.parametrize("kind", ["image.requested", "image.done"])
def test_an_image_event_from_before_also_still_decodes(kind: str) -> None:
    """``also`` was added to schema version 1: events without it (published by
    earlier code, still on the topics) stand for their own position only."""
    older = json.loads((GOLDEN / f"{kind}.v1.json").read_bytes())
    del older["also"]
    event = decode(json.dumps(older))
    assert isinstance(event, ImageRequested | ImageDone) and event.also == []
