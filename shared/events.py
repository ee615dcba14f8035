"""Versioned event models: the contract between services.

Events are named in the past tense and carry ``event_type`` and
``schema_version``. A consumer decodes with :func:`decode`, which raises
:class:`~shared.errors.InvalidInputError` for anything that is not a known,
valid event (the consumer then dead-letters it and moves on).

Golden example payloads live in ``tests/data/events/`` and are checked against
these models, so a change that breaks the wire format fails a test.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Container, Mapping, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import InvalidInputError
from shared.topics import Topic

# Namespace for deterministic image ids: uuid5(namespace, f"{request_id}\n{url}").
IMAGE_ID_NAMESPACE = uuid.UUID("6a1f0d3e-8a57-4c1e-9d5e-2f0b7c9e4a11")


def now_utc() -> datetime:
    return datetime.now(UTC)


def image_id_for(request_id: str, url: str) -> str:
    """One image per distinct URL within a request: duplicates share the id."""
    return str(uuid.uuid5(IMAGE_ID_NAMESPACE, f"{request_id}\n{url}"))


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1
    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: datetime = Field(default_factory=now_utc)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class RequestCreated(_Event):
    event_type: Literal["request.created"] = "request.created"
    request_id: str
    product_count: int
    image_count: int
    webhook_url: str | None = None
    created_at: datetime
    source_filename: str | None = None
    # Rows per product page, so a replay into an empty database rebuilds the
    # pages as ingest stored them (python -m deploy.rebuild).
    page_rows: int | None = None
    # The tenant the request belongs to (None in events from before tenants).
    tenant: str | None = None


class PositionRef(BaseModel):
    """Another URL position (same request, same URL) an image's result applies
    to, with its row's product name (so events alone rebuild every row, see
    ``deploy/rebuild.py``; ``None`` in events from before names were carried)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    row: int
    serial: int
    position: int
    product_name: str | None = None


# Positions an ``image.requested`` covers besides its own (``also``), at most,
# and the JSON bytes of their product names, at most: an event stays well
# below Kafka's 1 MB message limit whatever the names (1,000 references with
# short names are about 60 KB).
MAX_ALSO = 1000
MAX_ALSO_NAME_BYTES = 300_000


class ImageRequested(_Event):
    """One event per URL position, or per distinct URL: a URL repeated within a
    request is published once per ``MAX_ALSO + 1`` of its positions, the event
    of the first (its leader) listing the others in ``also``; the result is
    recorded for every one of them. ``image_id`` is shared by identical URLs of
    one request, so they land on the same partition and are fetched once.
    ``row`` (0-based among the CSV's data rows) and ``position`` address the
    URL; with ``serial`` and ``product_name`` an event carries its whole row."""

    event_type: Literal["image.requested"] = "image.requested"
    request_id: str
    image_id: str
    serial: int
    row: int | None = None  # None only in events from before rows were carried
    product_name: str
    position: int  # 0-based index of the URL within its product's cell
    url: str
    # Set by the replay tool: a replayed image is processed again rather than
    # answered from the processor's cache of recent results.
    replay_id: str | None = None
    # Other positions of the same URL this event stands for (see above).
    also: list[PositionRef] = Field(default_factory=list)


class ImageDone(_Event):
    event_type: Literal["image.done"] = "image.done"
    request_id: str
    image_id: str
    serial: int
    row: int | None = None
    position: int
    url: str
    status: Literal["succeeded", "failed"]
    output_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    quality_in: int | None = None
    quality_out: int | None = None
    quality_method: str | None = None
    source_format: str | None = None
    output_format: str | None = None
    kept_original: bool = False
    # Set when the result came from an external processing service's callback.
    source: Literal["processor", "callback"] = "processor"
    # Other positions of the same URL the result applies to (from the request's
    # ``also``): the aggregator records it for each of them too.
    also: list[PositionRef] = Field(default_factory=list)


class RequestCompleted(_Event):
    event_type: Literal["request.completed"] = "request.completed"
    request_id: str
    status: Literal["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"]
    total: int
    succeeded: int
    failed: int
    completed_at: datetime


AnyEvent = Annotated[
    RequestCreated | ImageRequested | ImageDone | RequestCompleted,
    Field(discriminator="event_type"),
]
_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

TOPIC_OF: dict[type[_Event], Topic] = {
    RequestCreated: Topic.REQUEST_CREATED,
    ImageRequested: Topic.IMAGE_REQUESTED,
    ImageDone: Topic.IMAGE_DONE,
    RequestCompleted: Topic.REQUEST_COMPLETED,
}


def decode(raw: bytes | str | None) -> AnyEvent:
    """Parse one message value; InvalidInputError if it is not a valid event."""
    if raw is None:
        raise InvalidInputError("empty message value", code="invalid_event")
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise InvalidInputError(
            f"not a valid imgpipe event: {exc.error_count()} problem(s): "
            f"{exc.errors()[0]['msg']}",
            code="invalid_event",
        ) from exc


EventT = TypeVar("EventT", RequestCreated, ImageRequested, ImageDone, RequestCompleted)


def decode_as(raw: bytes | str | None, cls: type[EventT]) -> EventT:
    """:func:`decode`, then require one event type: a valid event of another
    type raises InvalidInputError(code="unexpected_event")."""
    event = decode(raw)
    if not isinstance(event, cls):
        raise InvalidInputError(f"unexpected {event.event_type} event, expected "
                                f"{cls.model_fields['event_type'].default}",
                                code="unexpected_event")
    return event


_DATETIME_JSON: TypeAdapter[datetime] = TypeAdapter(datetime)
# Hex digit of a UUID's variant nibble (RFC 4122: 0b10xx) for any random nibble.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid_str(digest_hex: str, version: str) -> str:
    """``str(uuid.UUID(bytes=..., version=v))`` for the first 16 bytes (32 hex
    digits) of ``digest_hex``, without building a UUID object."""
    h = digest_hex
    return (f"{h[:8]}-{h[8:12]}-{version}{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-"
            f"{h[20:32]}")


class ImageRequestedEncoder:
    """Encodes the ``image.requested`` events of one request straight to JSON.

    A fast path for ingest (tens of thousands of events per upload): the bytes
    are identical to ``ImageRequested(...).encode()`` (same field order, the
    same string escaping, pydantic's own datetime format), with ``event_id`` a
    random UUID4 and ``image_id`` :func:`image_id_for`, but without building
    and validating a model and two ``uuid.UUID`` objects per event. A unit test
    pins the equality against the model.
    """

    def __init__(self, request_id: str) -> None:
        self._image_ns = hashlib.sha1(IMAGE_ID_NAMESPACE.bytes + f"{request_id}\n".encode())
        self._after_time = (f',"event_type":"image.requested","request_id":'
                            f'{encode_basestring(request_id)},"image_id":"')
        self._occurred: tuple[datetime, str] | None = None

    def image_id(self, url: str) -> str:
        """Same as :func:`image_id_for` (uuid5 of ``request_id + "\\n" + url``)."""
        h = self._image_ns.copy()
        h.update(url.encode())
        return _uuid_str(h.hexdigest(), "5")

    def _occurred_json(self, when: datetime) -> str:
        """Formatted once per distinct time (callers pass one per batch)."""
        if self._occurred is None or self._occurred[0] != when:
            self._occurred = (when, _DATETIME_JSON.dump_json(when).decode())
        return self._occurred[1]

    def encode_product(self, serial: int, row: int, product_name: str, urls: list[str],
                       occurred_at: datetime | None = None, start: int = 0,
                       stop: int | None = None, *, covered: Container[int] = (),
                       also: Mapping[int, Sequence[Sequence[Any]]] | None = None,
                       ) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` of the events of positions ``start`` to ``stop`` of
        one row (all by default): key is the image id. Positions in
        ``covered`` get no event (another position's event covers them); a
        position in ``also`` lists those ``(row, serial, position)`` triples."""
        occurred = self._occurred_json(occurred_at or now_utc())
        stop = len(urls) if stop is None else stop
        random_hex = os.urandom(16 * max(0, stop - start)).hex()
        middle = (f'","serial":{int(serial)},"row":{int(row)},'
                  f'"product_name":{encode_basestring(product_name)}')
        out = []
        for k, i in enumerate(range(start, stop)):
            if i in covered:
                continue
            refs = also.get(i, ()) if also else ()
            out.append(self._message(occurred, middle, i, urls[i], refs,
                                     random_hex[32 * k:32 * k + 32]))
        return out

    def encode_position(self, serial: int, row: int, product_name: str, position: int,
                        url: str, also: Sequence[Sequence[Any]] = (),
                        occurred_at: datetime | None = None) -> tuple[bytes, bytes]:
        """``(key, value)`` of the event of one position (and its ``also``)."""
        middle = (f'","serial":{int(serial)},"row":{int(row)},'
                  f'"product_name":{encode_basestring(product_name)}')
        return self._message(self._occurred_json(occurred_at or now_utc()), middle, position,
                             url, also, os.urandom(16).hex())

    def _message(self, occurred: str, middle: str, position: int, url: str,
                 refs: Sequence[Sequence[Any]], random_hex: str) -> tuple[bytes, bytes]:
        image_id = self.image_id(url)
        event_id = _uuid_str(random_hex, "4")
        value = (f'{{"schema_version":1,"event_id":"{event_id}","occurred_at":{occurred}'
                 f'{self._after_time}{image_id}{middle},"position":{int(position)},'
                 f'"url":{encode_basestring(url)},"replay_id":null,'
                 f'"also":[{_refs_json(refs)}]}}')
        return image_id.encode(), value.encode()


def _refs_json(refs: Sequence[Sequence[Any]]) -> str:
    """``also`` as the model encodes it, from ``(row, serial, position[, name])``."""
    return ",".join(
        f'{{"row":{int(ref[0])},"serial":{int(ref[1])},"position":{int(ref[2])},'
        f'"product_name":{encode_basestring(ref[3]) if len(ref) > 3 else "null"}}}'
        for ref in refs)


def event_key(event: _Event) -> bytes:
    """The partition key: image events by image id, the rest by request id."""
    if isinstance(event, ImageRequested):
        return event.image_id.encode()
    return event.request_id.encode()  # type: ignore[attr-defined]
