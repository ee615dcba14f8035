"""Running a consumer service: signals, health endpoint, orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from shared.consumer import ConsumerLoop, DeadLetter, Handler
from shared.health import start_health_server
from shared.kafka import EventPublisher

log = logging.getLogger(__name__)


async def run_consumer_service(
    *, name: str, consumer: AIOKafkaConsumer, topic: str, handler: Handler,
    publisher: EventPublisher,
    host: str, health_port: int, max_in_flight: int, drain_seconds: float,
    give_up: DeadLetter | None = None,
) -> None:
    """Consume until SIGTERM/SIGINT, then drain in-flight work, commit and close."""

    async def dead_letter(record: ConsumerRecord[Any, Any], exc: Exception) -> None:
        await publisher.dead_letter(record.value, source=f"{name}:{record.topic}", error=exc)

    loop = ConsumerLoop(consumer, handler, dead_letter=dead_letter, give_up=give_up,
                        max_in_flight=max_in_flight, drain_seconds=drain_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, loop.stop)

    async def health() -> dict[str, Any]:
        return {"ok": True, "service": name, **await loop.describe()}

    consumer.subscribe([topic], listener=loop.rebalance_listener())
    await consumer.start()
    runner = await start_health_server(host, health_port, health)
    log.info("%s consuming; health on http://%s:%s/health", name, host, health_port)
    try:
        await loop.run()
    finally:
        await consumer.stop()
        await runner.cleanup()
        log.info("%s stopped", name)
