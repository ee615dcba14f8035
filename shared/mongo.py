"""MongoDB access (PyMongo's async API): client factory, collections, indexes.

Collections (see docs/database.md):
- ``requests``: one per upload; counts, status, timestamps, output CSV, webhook.
- ``product_pages``: the CSV rows, ``page_rows`` consecutive rows per document,
  and ``product_serials``: serial -> row, only for files whose serials do not
  follow their rows (``shared/products.py``).
- ``images``: one per URL position; status, output URL, sizes, qualities, error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.settings import CommonSettings

log = logging.getLogger(__name__)
TERMINAL_STATUSES = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED")


def make_client(settings: CommonSettings) -> AsyncMongoClient:
    """A client whose pooled connections never outlive a server's (or a
    firewall's) idle timeout: one idle for ``mongo_max_idle_seconds`` is closed
    by the pool instead of failing the next operation (SecantusDB closes
    connections idle for 300 s)."""
    return AsyncMongoClient(settings.mongo_uri, serverSelectionTimeoutMS=10_000, tz_aware=True,
                            maxIdleTimeMS=int(settings.mongo_max_idle_seconds * 1000))


@dataclass(frozen=True)
class Store:
    db: AsyncDatabase

    @property
    def requests(self) -> AsyncCollection:
        return self.db["requests"]

    @property
    def product_pages(self) -> AsyncCollection:
        return self.db["product_pages"]

    @property
    def product_serials(self) -> AsyncCollection:
        return self.db["product_serials"]

    @property
    def images(self) -> AsyncCollection:
        return self.db["images"]

    @classmethod
    def from_client(cls, client: AsyncMongoClient, settings: CommonSettings) -> Store:
        return cls(client[settings.mongo_db])

    async def ensure_indexes(self) -> None:
        await self.requests.create_index([("created_at", ASCENDING)])
        await self.requests.create_index(
            [("idempotency_key", ASCENDING)],
            unique=True,
            partialFilterExpression={"idempotency_key": {"$type": "string"}},
        )
        await self.images.create_index(
            [("request_id", ASCENDING), ("serial", ASCENDING), ("position", ASCENDING)]
        )
        await self.images.create_index([("request_id", ASCENDING), ("status", ASCENDING)])


async def mongo_health(store: Store) -> bool:
    """Whether MongoDB answers a ping; the cause of a failure is logged, never
    returned (health endpoints are public and must not reveal internals)."""
    try:
        await store.db.command("ping")
    except Exception as exc:
        log.warning("health: MongoDB ping failed: %s", exc)
        return False
    return True


def new_request_doc(request_id: str, *, product_count: int, image_count: int,
                    webhook_url: str | None, created_at: datetime, filename: str | None,
                    accepted: bool, **extra: Any) -> dict[str, Any]:
    """A request as first written (by ingest, or by the aggregator on a replay
    into an empty database): one template, so both agree on every field."""
    return {
        "_id": request_id, "accepted": accepted, "status": "QUEUED",
        "product_count": product_count, "image_count": image_count,
        "succeeded": 0, "failed": 0, "webhook_url": webhook_url,
        "webhook": {"status": "pending" if webhook_url else "none", "attempts": 0},
        "filename": filename, "created_at": created_at, "updated_at": created_at,
        "started_at": None, "completed_at": None, "output_csv_url": None,
        "completion_published": False, **extra,
    }


async def db_now(store: Store) -> datetime:
    """The database server's clock (``localTime`` of ``hello``), in UTC.

    Leases are set and checked against this one clock, so hosts whose clocks
    disagree never take over a live lease.
    """
    now: datetime = (await store.db.client.admin.command("hello"))["localTime"]
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def position_id(request_id: str, serial: int, position: int) -> str:
    return f"{request_id}:{serial}:{position}"
