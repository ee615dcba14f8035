"""The notifier against real servers: MongoDB API, S3 API and a webhook receiver.

Delivery is claimed in MongoDB, so concurrent duplicates POST once, and the
attempt cap counts every attempt ever made, across restarts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import aiohttp
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notifier.handlers import Deps, lease_seconds, on_request_completed
from services.notifier.settings import Settings
from shared import webhook_signing as ws
from shared.errors import PermanentError, TransientError
from shared.events import RequestCompleted, now_utc
from shared.mongo import Store, db_now, make_client, position_id
from shared.netguard import NetPolicy, guarded_session
from shared.products import PageBuilder
from shared.storage import ObjectStore
from tests.conftest import WEBHOOK_SECRET, HttpServer

pytestmark = pytest.mark.stack


class CountingObjects(ObjectStore):
    """The real object store, counting uploads."""

    puts: int = 0

    async def put_file(self, key: str, data: IO[bytes], length: int,
                       content_type: str) -> str:
        self.puts += 1
        return await super().put_file(key, data, length, content_type)


@dataclass
class Env:
    deps: Deps
    server: HttpServer

    @property
    def store(self) -> Store:
        return self.deps.store

    async def request(self, *, hook: str | None = "hook",
                      webhook: dict[str, Any] | None = None) -> RequestCompleted:
        """A finished request with one product; its completion event."""
        rid = str(uuid.uuid4())
        url = self.server.url(hook) + "?token=abc" if hook else None
        now = now_utc()
        await self.store.requests.insert_one({
            "_id": rid, "status": "COMPLETED", "product_count": 1,
            "image_count": 1, "succeeded": 1, "failed": 0, "webhook_url": url,
            "webhook": webhook or {"status": "pending" if url else "none", "attempts": 0},
            "created_at": now, "completed_at": now, "output_csv_url": None, "page_rows": 100})
        pages = PageBuilder(rid, page_rows=100)
        pages.add(1, "Shoe", 2, ["http://in/a.jpg"])
        await self.store.product_pages.insert_one(pages.flush())
        await self.store.images.insert_one({
            "_id": position_id(rid, 1, 0), "request_id": rid, "serial": 1, "position": 0,
            "status": "succeeded", "output_url": "http://out/a.jpg"})
        return RequestCompleted(request_id=rid, status="COMPLETED", total=1, succeeded=1,
                                failed=0, completed_at=now)

    async def hook(self, ev: RequestCompleted) -> dict[str, Any]:
        doc = await self.store.requests.find_one({"_id": ev.request_id})
        assert doc is not None
        return dict(doc["webhook"])


@pytest.fixture
async def env(stack_env: dict[str, str], http_server: HttpServer) -> AsyncIterator[Env]:
    fields: dict[str, Any] = {k.removeprefix("IMGPIPE_").lower(): v
                              for k, v in stack_env.items()}
    fields["mongo_db"] = f"notif{uuid.uuid4().hex[:8]}"
    s = Settings(**fields, webhook_max_attempts=3, webhook_backoff_base=0.05,
                 webhook_backoff_max=0.2, webhook_timeout=5.0, webhook_secret=WEBHOOK_SECRET)
    client = make_client(s)
    objects = CountingObjects(s)
    await objects.ensure_bucket()
    http = guarded_session(NetPolicy.from_strings("127.0.0.0/8", "80,443"),
                           timeout=aiohttp.ClientTimeout(total=s.webhook_timeout))
    try:
        yield Env(Deps(s, Store.from_client(client, s), objects, http), http_server)
    finally:
        await http.close()
        await client.drop_database(s.mongo_db)
        await client.close()


async def test_concurrent_duplicates_post_once(env: Env) -> None:
    ev = await env.request()
    env.server.delays["hook"] = 0.5  # the first delivery is still in flight
    results = await asyncio.gather(*(on_request_completed(env.deps, ev) for _ in range(3)),
                                   return_exceptions=True)
    # A loser either saw the delivery finished or was told to retry later.
    assert all(r is None or isinstance(r, TransientError) for r in results), results
    await on_request_completed(env.deps, ev)  # the consumer's retry: nothing left to do
    assert len(env.server.received) == 1
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"], hook.get("lease_until")) == ("delivered", 1, None)


@pytest.mark.parametrize("status", [301, 307, 400, 404])
async def test_3xx_and_4xx_are_permanent(env: Env, status: int) -> None:
    ev = await env.request()
    env.server.statuses["hook"] = [status]
    await on_request_completed(env.deps, ev)
    assert len(env.server.received) == 1
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"]) == ("failed", 1)
    assert hook["last_error"].startswith(f"http_{status}")
    assert hook.get("lease_until") is None


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_retryable_statuses_are_retried_then_delivered(env: Env, status: int) -> None:
    ev = await env.request()
    env.server.statuses["hook"] = [status, 204]
    await on_request_completed(env.deps, ev)
    assert len(env.server.received) == 2
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"], hook["last_error"]) == ("delivered", 2, None)
    ids = {r["headers"]["Idempotency-Key"] for r in env.server.received}
    assert len(ids) == 1  # one notification, sent twice


async def test_a_receivers_retry_after_is_honoured_up_to_the_backoff_cap(env: Env) -> None:
    ev = await env.request()
    env.server.statuses["hook"] = [503, 204]
    env.server.retry_after["hook"] = "3600"
    loop = asyncio.get_running_loop()
    start = loop.time()
    await on_request_completed(env.deps, ev)
    # The cap (0.2 s), not an hour; and not the first backoff (at most 0.05 s).
    assert 0.18 <= loop.time() - start < 3.0
    assert (await env.hook(ev))["status"] == "delivered"


async def test_the_attempt_cap_counts_every_delivery(env: Env) -> None:
    ev = await env.request()
    env.server.statuses["hook"] = [500] * 10
    await on_request_completed(env.deps, ev)
    assert len(env.server.received) == 3
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"], hook["last_error"]) == ("failed", 3, "http_500")


async def test_attempts_at_the_max_send_nothing(env: Env) -> None:
    """A restart after the last allowed attempt (status still pending) posts nothing."""
    ev = await env.request(webhook={"status": "pending", "attempts": 3,
                                    "last_error": "http_500"})
    await on_request_completed(env.deps, ev)
    assert env.server.received == []
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"]) == ("failed", 3)


async def test_a_restart_resumes_with_the_remaining_attempts(env: Env) -> None:
    ev = await env.request(webhook={"status": "pending", "attempts": 2})
    env.server.statuses["hook"] = [500, 204]
    await on_request_completed(env.deps, ev)
    assert len(env.server.received) == 1  # the third and last attempt
    assert (await env.hook(ev))["status"] == "failed"


async def test_a_live_lease_defers_and_an_expired_one_is_taken_over(env: Env) -> None:
    """A crash mid-delivery leaves the lease; the redelivered event waits it out."""
    ev = await env.request(webhook={
        "status": "pending", "attempts": 1, "lease_owner": "dead",
        "lease_until": now_utc() + timedelta(seconds=lease_seconds(env.deps.settings))})
    with pytest.raises(TransientError) as err:
        await on_request_completed(env.deps, ev)
    assert env.server.received == []
    # The consumer is told when the lease runs out (the loop caps that wait).
    assert 0 < (err.value.retry_after or 0) <= lease_seconds(env.deps.settings) + 1
    await env.store.requests.update_one({"_id": ev.request_id}, {
        "$set": {"webhook.lease_until": now_utc() - timedelta(seconds=1)}})
    await on_request_completed(env.deps, ev)
    assert len(env.server.received) == 1
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"]) == ("delivered", 2)


async def test_an_attempt_killed_during_its_post_is_still_counted(env: Env) -> None:
    ev = await env.request()
    env.server.delays["hook"] = 2.0
    task = asyncio.ensure_future(on_request_completed(env.deps, ev))
    for _ in range(200):  # until the POST has reached the receiver
        if env.server.received:
            break
        await asyncio.sleep(0.01)
    task.cancel()  # the notifier is killed mid-POST
    with pytest.raises(asyncio.CancelledError):
        await task
    hook = await env.hook(ev)
    assert (hook["status"], hook["attempts"]) == ("pending", 1)


async def test_leases_follow_the_database_clock_not_the_hosts(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notifier whose clock runs an hour ahead must not take over a live lease."""
    ev = await env.request()
    await env.store.requests.update_one({"_id": ev.request_id}, {"$set": {
        "webhook.lease_owner": "alive",
        "webhook.lease_until": await db_now(env.store) + timedelta(seconds=60)}})
    fast = now_utc() + timedelta(hours=1)
    monkeypatch.setattr("services.notifier.handlers.now_utc", lambda: fast)
    with pytest.raises(TransientError):
        await on_request_completed(env.deps, ev)
    assert env.server.received == []


async def test_a_lease_is_taken_on_the_database_clock(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the database's clock an hour behind the host's, the lease written
    must be an hour behind too: it comes from the database's clock."""
    real_db_now = db_now

    async def db_behind(store: Store) -> datetime:
        return await real_db_now(store) - timedelta(hours=1)

    monkeypatch.setattr("services.notifier.handlers.db_now", db_behind)
    ev = await env.request()
    env.server.delays["hook"] = 1.0
    task = asyncio.ensure_future(on_request_completed(env.deps, ev))
    lease = None
    async with asyncio.timeout(10):
        while lease is None:
            await asyncio.sleep(0.02)
            lease = (await env.hook(ev)).get("lease_until")
    assert lease < now_utc() - timedelta(minutes=50)
    await task
    assert (await env.hook(ev))["status"] == "delivered"


async def test_a_request_whose_rows_are_missing_is_not_notified_and_says_why(
        env: Env) -> None:
    ev = await env.request()
    await env.store.product_pages.delete_many({})
    with pytest.raises(PermanentError):  # dead-lettered by the consumer loop
        await on_request_completed(env.deps, ev)
    assert env.server.received == []
    doc = await env.store.requests.find_one({"_id": ev.request_id})
    assert doc is not None and doc["output_csv_url"] is None
    assert doc["output_csv_error"].startswith("product_rows_missing: ")
    assert doc["webhook"]["status"] == "pending"  # sent once the rows are back and replayed


async def test_every_webhook_is_signed_by_the_standard(env: Env) -> None:
    """Standard Webhooks: the reference library verifies it over the raw body;
    a tampered body does not verify."""
    ev = await env.request()
    await on_request_completed(env.deps, ev)
    [note] = env.server.received
    assert note["signature_error"] is None
    assert Webhook(WEBHOOK_SECRET).verify(note["body"], note["headers"])["request_id"] == (
        ev.request_id)
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRET).verify(note["body"] + b" ", note["headers"])
    assert note["path"] == "/hook?token=abc"


async def test_retries_keep_the_webhook_id_and_are_signed_afresh(env: Env) -> None:
    ev = await env.request()
    env.server.statuses["hook"] = [500, 204]
    await on_request_completed(env.deps, ev)
    first, second = env.server.received
    ids = {n["headers"][ws.ID] for n in (first, second)}
    assert len(ids) == 1 and ids.pop().startswith("msg_")
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"]
    assert int(second["headers"][ws.TIMESTAMP]) >= int(first["headers"][ws.TIMESTAMP])
    assert first["signature_error"] is None and second["signature_error"] is None


async def test_during_a_rotation_webhooks_carry_both_signatures(env: Env) -> None:
    new = ws.new_secret()
    env.deps.settings.webhook_secret = f"{new} {WEBHOOK_SECRET}"
    ev = await env.request()
    await on_request_completed(env.deps, ev)
    [note] = env.server.received
    assert len(note["headers"][ws.SIGNATURE].split()) == 2
    for secret in (new, WEBHOOK_SECRET):
        Webhook(secret).verify(note["body"], note["headers"])


async def test_unsigned_only_when_opted_out(env: Env) -> None:
    env.deps.settings.webhook_secret, env.deps.settings.webhook_unsigned = "", True
    env.server.expect_unsigned = True
    ev = await env.request()
    await on_request_completed(env.deps, ev)
    [note] = env.server.received
    assert not {ws.ID, ws.TIMESTAMP, ws.SIGNATURE} & {h.lower() for h in note["headers"]}
    assert note["signature_error"] is not None and note["json"]["request_id"] == ev.request_id


async def test_the_output_csv_is_stored_once_and_recorded(env: Env) -> None:
    ev = await env.request(hook=None)
    await on_request_completed(env.deps, ev)
    await on_request_completed(env.deps, ev)  # a redelivery
    assert isinstance(env.deps.objects, CountingObjects)
    assert env.deps.objects.puts == 1
    doc = await env.store.requests.find_one({"_id": ev.request_id})
    assert doc is not None
    url = doc["output_csv_url"]  # the archived object's canonical URL
    assert url == env.deps.objects.object_url(f"{ev.request_id}/output.csv")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 403  # private: not without a key
    csv = (await env.deps.objects.get(f"{ev.request_id}/output.csv")).decode("utf-8-sig")
    assert csv.splitlines()[1] == "1,Shoe,http://in/a.jpg,http://out/a.jpg"
    assert env.server.received == []  # no webhook URL, nothing sent


@pytest.mark.parametrize("state", [{"status": "RECEIVING"}, {"status": "QUEUED"},
                                   {"status": "PROCESSING"}])
async def test_no_csv_and_no_webhook_for_a_request_not_to_notify(
        env: Env, state: dict[str, Any]) -> None:
    """A request that is not finished (a stale completion replayed after a
    reset): nothing is stored or sent."""
    ev = await env.request()
    await env.store.requests.update_one({"_id": ev.request_id}, {"$set": state})
    await on_request_completed(env.deps, ev)
    assert env.server.received == []
    doc = await env.store.requests.find_one({"_id": ev.request_id})
    assert doc is not None and doc["output_csv_url"] is None


async def test_a_completion_from_before_a_reset_is_ignored(env: Env) -> None:
    """The request was reset and completed again: the old event must not
    notify (with stale counts) in place of the new one."""
    ev = await env.request()
    await env.store.requests.update_one(
        {"_id": ev.request_id},
        {"$set": {"completed_at": ev.completed_at + timedelta(seconds=30)}})
    await on_request_completed(env.deps, ev)
    assert env.server.received == []


async def test_the_webhook_links_the_status_apis_output_csv(env: Env) -> None:
    """Not the archived object (private): the status API's output.csv, which
    hands out fresh links on every download."""
    ev = await env.request()
    await on_request_completed(env.deps, ev)
    [note] = env.server.received
    status_url = env.deps.settings.status_url(ev.request_id)
    assert note["json"]["output_csv_url"] == f"{status_url}/output.csv"
    assert note["json"]["status_url"] == status_url
