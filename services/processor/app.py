"""Processor wiring: one bootstrap that builds the clients and runs the loop."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.structs import ConsumerRecord

from services.processor.engine import EngineOptions, EnginePool
from services.processor.fetch import Fetcher, FetchOptions
from services.processor.handlers import ImageProcessor, report_unexpected
from services.processor.settings import Settings
from shared.events import ImageRequested, decode_as
from shared.kafka import EventPublisher, ensure_topics, make_consumer
from shared.logs import setup_logging
from shared.service import run_consumer_service
from shared.storage import ObjectStore
from shared.topics import Topic

log = logging.getLogger("processor")


def engine_options(s: Settings) -> EngineOptions:
    return EngineOptions(min_quality=s.min_quality, force_format=s.force_format,
                         keep_smaller_original=s.keep_smaller_original,
                         keep_metadata=s.keep_metadata, max_pixels=s.max_pixels,
                         cpu_seconds=s.cpu_seconds_per_image)


def fetch_options(s: Settings) -> FetchOptions:
    return FetchOptions(connect_timeout=s.fetch_connect_timeout,
                        read_timeout=s.fetch_read_timeout,
                        total_timeout=s.fetch_total_timeout, max_bytes=s.fetch_max_bytes,
                        max_attempts=s.fetch_max_attempts, backoff_base=s.fetch_backoff_base,
                        per_host_limit=s.fetch_per_host_limit)


async def main(settings: Settings | None = None) -> None:
    s = settings or Settings()
    setup_logging("processor", s.log_level)
    await ensure_topics(s)
    store = ObjectStore(s)
    await store.ensure_bucket()
    publisher = EventPublisher(s, client_id="imgpipe-processor")
    pool = EnginePool(engine_options(s), workers=s.engine_workers())
    await publisher.start()
    try:
        async with Fetcher(s.net_policy(), fetch_options(s)) as fetcher:
            processor = ImageProcessor(fetcher, pool, store, publisher)

            async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
                await processor.handle(decode_as(record.value, ImageRequested))

            await run_consumer_service(
                name="processor", consumer=make_consumer(
                    s, group_id=s.processor_group or f"{s.topic_prefix}-processor"),
                topic=Topic.IMAGE_REQUESTED.full(s.topic_prefix), handler=handle,
                publisher=publisher, host=s.processor_host,
                health_port=s.processor_health_port, max_in_flight=s.processor_max_in_flight,
                drain_seconds=s.processor_drain_seconds,
                give_up=lambda record, exc: report_unexpected(publisher, record.value, exc))
    finally:
        await pool.close()
        await publisher.stop()


def run() -> None:
    asyncio.run(main())
