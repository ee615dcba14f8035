"""API keys, the per-key rate limit and the upload page's demo key (no servers)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from services.ingest.app import create_app
from services.ingest.settings import Settings
from shared import tenants
from shared.auth import Authenticator, RateLimit
from shared.errors import RateLimited, Unauthorized
from shared.problems import for_error
from shared.tenants import Tenant


def test_a_key_is_parsed_only_in_its_exact_shape() -> None:
    secret = "A" * 43
    assert tenants.parse_token(f"imgpipe_0123456789ab_{secret}") == ("0123456789ab", secret)
    assert tenants.parse_token(f" imgpipe_0123456789ab_{secret}\n") == ("0123456789ab", secret)
    for bad in ("", "imgpipe_", f"imgpipe_0123456789AB_{secret}", f"imgpipe_0123_{secret}",
                f"imgpipe_0123456789ab_{secret}x", f"imgpipe_0123456789ab_{secret[:-1]}!",
                f"other_0123456789ab_{secret}"):
        assert tenants.parse_token(bad) is None, bad


@pytest.mark.parametrize("tenant", ["acme", "a", "shop-42", "x_y", "a" * 63])
def test_good_tenant_ids(tenant: str) -> None:
    assert tenants.check_tenant_id(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "Acme", "-a", "a b", "a/b", "a" * 64, "ü"])
def test_bad_tenant_ids_are_refused_with_how_to_fix_them(tenant: str) -> None:
    with pytest.raises(tenants.TenantInvalid, match="lower-case letters"):
        tenants.check_tenant_id(tenant)


class Keys:
    """A stand-in for the api_keys collection (find_one by _id), counting reads."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs, self.reads = docs, 0

    async def find_one(self, query: dict[str, Any]) -> dict[str, Any] | None:
        self.reads += 1
        return self.docs.get(query["_id"])


async def test_a_key_is_checked_by_its_hash_and_the_answer_cached() -> None:
    secret = "s" * 43
    keys = Keys({"0123456789ab": {"_id": "0123456789ab", "tenant": "acme",
                                  "secret_sha256": tenants.secret_hash(secret),
                                  "revoked_at": None}})
    store: Any = type("S", (), {"api_keys": keys})()
    auth = Authenticator(store, cache_seconds=60)
    token = f"imgpipe_0123456789ab_{secret}"
    assert await auth.tenant(token) == Tenant("acme", "0123456789ab")
    assert await auth.tenant(token) == Tenant("acme", "0123456789ab")
    assert keys.reads == 1  # the second call came from the cache
    for wrong in (None, "", f"imgpipe_0123456789ab_{'t' * 43}", "imgpipe_nope"):
        with pytest.raises(Unauthorized):
            await auth.tenant(wrong)
    assert secret not in json.dumps([str(k) for k in auth._cache])  # no key kept as is


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    limit = RateLimit(rate=1.0, burst=3, what="uploads")
    for _ in range(3):
        limit.take("k")
    with pytest.raises(RateLimited) as refused:
        limit.take("k")
    assert 0 < (refused.value.retry_after or 0) <= 1.0
    assert "at most 1 a second" in refused.value.message
    limit.take("other")  # another key has its own bucket
    RateLimit(rate=0, burst=0, what="x").take("k")  # 0: no limit


def test_limits_and_auth_errors_are_problems_with_the_headers_clients_need() -> None:
    limited = for_error(RateLimited("slow down", retry_after=1.2), retry_after=5)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    denied = for_error(Unauthorized("send a key"), retry_after=5)
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(bytes(denied.body))["code"] == "unauthorized"


@pytest.mark.parametrize(("client", "shown"), [("127.0.0.1", True), ("::1", True),
                                               ("203.0.113.9", False)])
async def test_the_upload_page_fills_in_the_demo_key_for_this_machine_only(
        client: str, shown: bool) -> None:
    key = "imgpipe_0123456789ab_" + "k" * 43
    app = create_app(Settings(demo_api_key=key))
    transport = httpx.ASGITransport(app=app, client=(client, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
        page = (await http.get("/")).text
    found = re.search(r"const DEMO_KEY = (\"[^\"]*\");", page)
    assert found is not None, "the page lost its demo key line"
    assert json.loads(found.group(1)) == (key if shown else "")
