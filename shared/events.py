"""Versioned event models: the contract between services.

Events are named in the past tense and carry ``event_type`` and
``schema_version``. A consumer decodes with :func:`decode`, which raises
:class:`~shared.errors.InvalidInputError` for anything that is not a known,
valid event (the consumer then dead-letters it and moves on).

Golden example payloads live in ``tests/data/events/`` and are checked against
these models, so a change that breaks the wire format fails a test.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar

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


class ImageRequested(_Event):
    """One event per URL position. ``image_id`` is shared by identical URLs of
    one request, so they land on the same partition and are fetched once."""

    event_type: Literal["image.requested"] = "image.requested"
    request_id: str
    image_id: str
    serial: int
    product_name: str
    position: int  # 0-based index of the URL within its product's cell
    url: str
    # Set by the replay tool: a replayed image is processed again rather than
    # answered from the processor's cache of recent results.
    replay_id: str | None = None


class ImageDone(_Event):
    event_type: Literal["image.done"] = "image.done"
    request_id: str
    image_id: str
    serial: int
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


def event_key(event: _Event) -> bytes:
    """The partition key: image events by image id, the rest by request id."""
    if isinstance(event, ImageRequested):
        return event.image_id.encode()
    return event.request_id.encode()  # type: ignore[attr-defined]
