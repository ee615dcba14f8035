"""Aggregator wiring: a Faust app whose agents keep request state in MongoDB.

Agents read raw bytes and decode with the shared event models themselves: an
undecodable message is dead-lettered instead of crashing the agent (Faust's
own deserialisation would restart the agent on the same message forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import faust
from pymongo import AsyncMongoClient

from services.aggregator.handlers import record_image_done, record_request_created
from services.aggregator.settings import Settings
from shared.errors import InvalidInputError
from shared.events import ImageDone, RequestCompleted, RequestCreated, decode
from shared.mongo import Store, make_client
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

    created, done, completed = (topic(Topic.REQUEST_CREATED), topic(Topic.IMAGE_DONE),
                                topic(Topic.REQUEST_COMPLETED))
    dead = topic(Topic.DEAD_LETTER)
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

    async def consume(stream: AsyncIterable[bytes], kind: type,
                      handle: Callable[[Any], Awaitable[None]]) -> None:
        async for raw in stream:
            try:
                event = decode(raw)
                if not isinstance(event, kind):
                    raise InvalidInputError(f"unexpected {event.event_type} event",
                                            code="unexpected_event")
            except InvalidInputError as exc:
                log.warning("dead-lettering a message: %s", exc)
                await dead.send(value=raw)
                continue
            await with_retries(partial(handle, event))

    @app.agent(created)
    async def on_request_created(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, RequestCreated, lambda ev: record_request_created(store(), ev))

    @app.agent(done)
    async def on_image_done(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, ImageDone, lambda ev: record_image_done(store(), ev, publish))

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        try:
            await store().db.command("ping")
            mongo = "ok"
        except Exception as exc:
            mongo = repr(exc)
        assigned = sorted(f"{tp.topic}[{tp.partition}]"
                          for tp in app.consumer.assignment()) if app.consumer else []
        body = {"ok": mongo == "ok", "service": "aggregator", "mongo": mongo,
                "assigned": assigned}
        return web.json(body, status=200 if body["ok"] else 503)

    return app


async def with_retries(call: Callable[[], Awaitable[None]]) -> None:
    """MongoDB or broker trouble is transient: retry with backoff, never skip."""
    attempt = 0
    while True:
        try:
            await call()
            return
        except InvalidInputError:
            raise
        except Exception as exc:
            attempt += 1
            delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
            log.warning("retrying in %.1fs after %r", delay, exc)
            await asyncio.sleep(delay)
