"""MongoDB access (PyMongo's async API): client factory, collections, indexes.

Collections (see docs/database.md):
- ``requests``: one per upload; counts, status, timestamps, output CSV, webhook.
- ``product_pages``: the CSV rows, ``page_rows`` consecutive rows per document
  (``shared/products.py``).
- ``url_groups``: the positions of a URL repeated within a request, one
  document per event that stands for them (``services/ingest/repeats.py``).
- ``images``: one per URL position; status, output URL, sizes, qualities, error.
- ``tenants``, ``api_keys``: who may call the APIs (``shared/tenants.py``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from shared.settings import CommonSettings

log = logging.getLogger(__name__)


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
    def url_groups(self) -> AsyncCollection:
        return self.db["url_groups"]

    @property
    def leases(self) -> AsyncCollection:
        return self.db["leases"]

    @property
    def images(self) -> AsyncCollection:
        return self.db["images"]

    @property
    def tenants(self) -> AsyncCollection:
        return self.db["tenants"]

    @property
    def api_keys(self) -> AsyncCollection:
        return self.db["api_keys"]

    @classmethod
    def from_client(cls, client: AsyncMongoClient, settings: CommonSettings) -> Store:
        return cls(client[settings.mongo_db])

    async def ensure_indexes(self) -> None:
        await self.requests.create_index([("created_at", ASCENDING)])
        await self.requests.create_index([("status", ASCENDING)])  # the active ones are few
        # The relay's work list: requests with events still to publish.
        await self.requests.create_index(
            [("relay_pending", ASCENDING), ("created_at", ASCENDING)],
            partialFilterExpression={"relay_pending": True})
        # An Idempotency-Key is the tenant's own: another tenant's same key is
        # another request. (The index of one version before was global.)
        with contextlib.suppress(OperationFailure):
            await self.requests.drop_index("idempotency_key_1")
        await self.requests.create_index(
            [("tenant", ASCENDING), ("idempotency_key", ASCENDING)],
            unique=True,
            partialFilterExpression={"idempotency_key": {"$type": "string"}},
        )
        # A tenant's active requests, counted at upload (its limit).
        await self.requests.create_index([("tenant", ASCENDING), ("status", ASCENDING)])
        await self.api_keys.create_index([("tenant", ASCENDING)])
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


async def db_now(store: Store) -> datetime:
    """The database server's clock (``localTime`` of ``hello``), in UTC.

    Leases are set and checked against this one clock, so hosts whose clocks
    disagree never take over a live lease.
    """
    now: datetime = (await store.db.client.admin.command("hello"))["localTime"]
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def position_id(request_id: str, serial: int, position: int) -> str:
    return f"{request_id}:{serial}:{position}"
