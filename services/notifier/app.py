"""Notifier wiring."""

from __future__ import annotations

import asyncio

import aiohttp
from aiokafka.structs import ConsumerRecord

from services.notifier.handlers import Deps, on_request_completed
from services.notifier.settings import Settings
from shared.events import RequestCompleted, decode_as
from shared.kafka import EventPublisher, ensure_topics, make_consumer
from shared.logs import setup_logging
from shared.mongo import Store, make_client
from shared.netguard import guarded_session
from shared.service import run_consumer_service
from shared.storage import ObjectStore
from shared.topics import Topic


async def main(settings: Settings | None = None) -> None:
    s = settings or Settings()
    setup_logging("notifier", s.log_level)
    await ensure_topics(s)
    objects = ObjectStore(s)
    await objects.ensure_bucket()
    client = make_client(s)
    publisher = EventPublisher(s, client_id="imgpipe-notifier")
    await publisher.start()
    http = guarded_session(s.net_policy(), timeout=aiohttp.ClientTimeout(total=s.webhook_timeout))
    deps = Deps(s, Store.from_client(client, s), objects, http)

    async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        await on_request_completed(deps, decode_as(record.value, RequestCompleted))

    try:
        await run_consumer_service(
            name="notifier", consumer=make_consumer(
                s, group_id=s.notifier_group or f"{s.topic_prefix}-notifier"),
            topic=Topic.REQUEST_COMPLETED.full(s.topic_prefix), handler=handle,
            publisher=publisher, host=s.notifier_host, health_port=s.notifier_health_port,
            max_in_flight=s.notifier_max_in_flight, drain_seconds=s.notifier_drain_seconds)
    finally:
        await http.close()
        await publisher.stop()
        await client.close()


def run() -> None:
    asyncio.run(main())
