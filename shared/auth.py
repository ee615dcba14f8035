"""API-key authentication and per-key rate limits of both HTTP APIs.

Every API route depends on :func:`tenant_of` (``Authorization: Bearer
imgpipe_…``); a missing, malformed, unknown or revoked key gets ``401`` with
the project's problem body and ``WWW-Authenticate: Bearer``, one message for
all of them. Keys are checked against MongoDB (``shared/tenants.py``) and the
answer is kept for ``cache_seconds`` (a revoked key stops working within
that time), so a client polling its status costs no database read per call.
A key is never logged: log lines name the key id only.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import RateLimited, Unauthorized
from shared.mongo import Store
from shared.tenants import Tenant, lookup

log = logging.getLogger(__name__)
CACHE_MAX = 10_000


class Authenticator:
    def __init__(self, store: Store, *, cache_seconds: float = 5.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Tenant | None, float]] = {}

    async def tenant(self, token: str | None) -> Tenant:
        if not token:
            raise Unauthorized("send your API key as 'Authorization: Bearer <key>' "
                               "(an operator makes one with python -m deploy.keys create)")
        digest = hashlib.sha256(token.encode()).hexdigest()  # the cache holds no key
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            found = hit[0]
        else:
            found = await lookup(self.store, token)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (found, now + self.cache_seconds)
        if found is None:
            raise Unauthorized("the API key is not valid (unknown, revoked or mistyped): "
                               "check it, or ask an operator for a new one")
        return found


@dataclass
class RateLimit:
    """A token bucket per key: ``rate`` calls a second on average, bursts of
    ``burst``. Kept in the process: with N replicas a key gets up to N times
    the rate (docs/api.md says so)."""

    rate: float
    burst: float
    what: str
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> None:
        if self.rate <= 0:
            return  # no limit
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            wait = (1 - tokens) / self.rate
            raise RateLimited(f"too many {self.what} with this API key: at most "
                              f"{self._per()}; retry after {wait:.1f}s", retry_after=wait)
        if len(self._buckets) >= CACHE_MAX:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1, now)

    def _per(self) -> str:
        if self.rate >= 1:
            return f"{self.rate:g} a second"
        return f"{self.rate * 60:g} a minute"


bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="An API key: `Authorization: Bearer imgpipe_…`")


async def tenant_of(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None,
                                           Depends(bearer)]) -> Tenant:
    """The calling tenant (a FastAPI dependency; the app holds an
    :class:`Authenticator` in ``app.state.auth``)."""
    auth: Authenticator = request.app.state.auth
    return await auth.tenant(credentials.credentials if credentials else None)


CurrentTenant = Annotated[Tenant, Depends(tenant_of)]
