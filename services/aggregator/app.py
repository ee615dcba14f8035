"""Aggregator wiring: a Faust app whose agents keep request state in MongoDB.

Agents read raw bytes and decode with the shared event models themselves: an
undecodable message is dead-lettered instead of crashing the agent (Faust's
own deserialisation would restart the agent on the same message forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import faust
from pymongo import AsyncMongoClient

from services.aggregator.handlers import (
    note_dead_letter,
    record_image_done,
    record_request_created,
)
from services.aggregator.settings import Settings
from shared.errors import InvalidInputError, PermanentError
from shared.events import AnyEvent, ImageDone, RequestCompleted, RequestCreated, decode
from shared.kafka import dead_letter_body
from shared.mongo import Store, make_client, mongo_health
from shared.retry import MAX_UNEXPECTED_ATTEMPTS, backoff, is_transient
from shared.topics import Topic

log = logging.getLogger("aggregator")


def create_app(s: Settings) -> faust.App:
    datadir = Path(s.aggregator_datadir.format(app_id=s.app_id()))
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        s.app_id(), broker=f"kafka://{s.kafka_bootstrap}", store="memory://",
        autodiscover=False, web_enabled=True, web_port=s.aggregator_health_port,
        web_bind=s.aggregator_host, web_host=s.aggregator_host,
        topic_partitions=s.topic_partitions, topic_replication_factor=1,
        producer_acks=-1, consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0, datadir=str(datadir),
    )

    def topic(t: Topic) -> faust.TopicT:
        return app.topic(t.full(s.topic_prefix), key_serializer="raw", value_serializer="raw")

    # One agent reads both inbound topics: a request's events are handled one at
    # a time (both topics are keyed by request id through the same partitioner,
    # and Faust co-partitions topics consumed together), so a recount can never
    # race an increment of the same request.
    inbound = app.topic(Topic.REQUEST_CREATED.full(s.topic_prefix),
                        Topic.IMAGE_DONE.full(s.topic_prefix),
                        key_serializer="raw", value_serializer="raw")
    completed, dead = topic(Topic.REQUEST_COMPLETED), topic(Topic.DEAD_LETTER)
    holder: dict[str, Any] = {}

    def store() -> Store:
        if "client" not in holder:
            client: AsyncMongoClient = make_client(s)
            holder["client"] = client
            holder["store"] = Store.from_client(client, s)
        result: Store = holder["store"]
        return result

    async def publish(ev: RequestCompleted) -> None:
        fut = await completed.send(key=ev.request_id.encode(), value=ev.encode())
        await fut  # wait for the broker's acknowledgement

    async def dead_letter(raw: bytes | None, source: str, exc: Exception) -> None:
        """Same envelope as EventPublisher.dead_letter; returns once acknowledged."""
        fut = await dead.send(value=dead_letter_body(raw, source, exc))
        await fut

    async def handle(event: AnyEvent) -> None:
        if isinstance(event, RequestCreated):
            await record_request_created(store(), event, publish)
        elif isinstance(event, ImageDone):
            await record_image_done(store(), event, publish)
        else:
            raise InvalidInputError(f"unexpected {event.event_type} event",
                                    code="unexpected_event")

    @app.agent(inbound)
    async def on_request_events(stream: faust.StreamT[bytes]) -> None:
        async for message in stream.events():
            raw, event = message.value, None
            try:
                event = decode(raw)
                await with_retries(partial(handle, event))
            except Exception as exc:  # invalid event, or a bug retried to its limit
                log.warning("dead-lettering a message: %r", exc)
                source = f"aggregator:{message.message.topic}"
                await with_retries(partial(dead_letter, raw, source, exc), park=False)
                if event is not None:
                    try:  # a note for people: never worth holding the stream for
                        await with_retries(partial(note_dead_letter, store(), event, exc))
                    except Exception:
                        log.exception("could not note the dead letter on request %s",
                                      event.request_id)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        mongo = "ok" if await mongo_health(store()) else "unavailable"
        assigned = sorted(f"{tp.topic}[{tp.partition}]"
                          for tp in app.consumer.assignment()) if app.consumer else []
        body = {"ok": mongo == "ok", "service": "aggregator", "mongo": mongo,
                "assigned": assigned}
        return web.json(body, status=200 if body["ok"] else 503)

    return app


async def with_retries(call: Callable[[], Awaitable[None]], *, park: bool = True) -> None:
    """The policy of shared/retry.py: transient trouble (MongoDB, Kafka) is
    retried until it passes, holding the agent's stream; an invalid event is
    raised at once, and anything else after a few attempts, for the caller to
    dead-letter (``park=False``: retry everything, for the dead-letter itself)."""
    attempt = 0
    while True:
        try:
            await call()
            return
        except Exception as exc:
            attempt += 1
            if park and (isinstance(exc, PermanentError) or (
                    not is_transient(exc) and attempt >= MAX_UNEXPECTED_ATTEMPTS)):
                raise
            delay = backoff(attempt)
            log.warning("retrying in %.1fs after %r", delay, exc)
            await asyncio.sleep(delay)
