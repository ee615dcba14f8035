"""Processing one image-requested event: fetch, compress, store, report."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from services.processor.engine import CompressResult, EnginePool
from services.processor.fetch import Fetcher
from shared.errors import ImgpipeError, PermanentError
from shared.events import ImageDone, ImageRequested, decode_as
from shared.kafka import EventPublisher
from shared.logs import request_id_var
from shared.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one distinct image; shared by every position it has."""

    fields: dict[str, Any]


def object_key(request_id: str, image_id: str, extension: str) -> str:
    """Deterministic: reprocessing overwrites, never duplicates."""
    return f"{request_id}/{image_id}.{extension}"


class ImageProcessor:
    def __init__(self, fetcher: Fetcher, pool: EnginePool, store: ObjectStore,
                 publisher: EventPublisher, *, cache_size: int = 4096) -> None:
        self.fetcher = fetcher
        self.pool = pool
        self.store = store
        self.publisher = publisher
        # image_id -> outcome (or the future of one in progress): identical URLs
        # of a request share an image_id and a partition, so they land here.
        self._outcomes: OrderedDict[str, asyncio.Future[Outcome]] = OrderedDict()
        self._cache_size = cache_size

    async def handle(self, event: ImageRequested) -> None:
        request_id_var.set(event.request_id)
        outcome = await self._outcome_for(event)
        done = ImageDone(request_id=event.request_id, image_id=event.image_id,
                         serial=event.serial, row=event.row, position=event.position,
                         url=event.url, also=event.also, **outcome.fields)
        await self.publisher.publish(done)
        log.info("image %s (product %s #%s, %s more positions) %s", event.image_id,
                 event.serial, event.position, len(event.also), done.status)

    async def _outcome_for(self, event: ImageRequested) -> Outcome:
        key = f"{event.image_id}/{event.replay_id or ''}"
        fut = self._outcomes.get(key)
        if fut is not None:  # failed attempts are never cached
            self._outcomes.move_to_end(key)
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._outcomes[key] = fut
        while len(self._outcomes) > self._cache_size:
            self._outcomes.popitem(last=False)
        try:
            outcome = await self._process(event)
        except asyncio.CancelledError:
            self._outcomes.pop(key, None)
            fut.cancel()
            raise
        except BaseException as exc:
            self._outcomes.pop(key, None)  # not cached: the retry does the work again
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise, nobody logs it twice
            raise
        fut.set_result(outcome)
        return outcome

    async def _process(self, event: ImageRequested) -> Outcome:
        """Anything wrong with the image itself (or its URL) becomes a failed
        outcome; transient trouble of our own (engine, storage, broker)
        propagates, and the consumer loop retries the message. The fetcher
        retries transient faults of the remote host itself and then reports a
        permanent error."""
        try:
            fetched = await self.fetcher.fetch(event.url)
            result = await self.pool.compress(fetched.data)
        except PermanentError as exc:
            return failed(exc)
        key = object_key(event.request_id, event.image_id, result.extension)
        url = await self.store.put(key, result.data, result.content_type)
        return succeeded(result, url)


async def report_unexpected(publisher: EventPublisher, raw: bytes | None,
                            error: Exception) -> None:
    """The consumer gave up on an image after repeated unexpected errors (a bug):
    report it as failed, so its request still finishes and shows why."""
    event = decode_as(raw, ImageRequested)
    await publisher.publish(ImageDone(
        request_id=event.request_id, image_id=event.image_id, serial=event.serial,
        row=event.row, position=event.position, url=event.url, also=event.also, status="failed",
        error_code="internal_error",
        error_message=f"processing failed unexpectedly: {error!r}"[:1000]))


def succeeded(result: CompressResult, url: str) -> Outcome:
    return Outcome({
        "status": "succeeded", "output_url": url, "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out, "quality_in": result.quality_in,
        "quality_out": result.quality_out, "quality_method": result.quality_method,
        "source_format": result.source_format, "output_format": result.format,
        "kept_original": result.kept_original,
    })


def failed(exc: ImgpipeError) -> Outcome:
    return Outcome({"status": "failed", "error_code": exc.code,
                    "error_message": exc.message[:1000]})
