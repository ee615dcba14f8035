"""Fetch one product image from an untrusted URL: guarded, bounded, retried, polite.

Every hop (the first URL and each redirect, followed by hand) goes through
``shared.netguard``; bodies are capped while streaming and sniffed for an image
signature; transient failures are retried by a ``shared.retry.RetryPolicy``
(exponential backoff, full jitter, ``Retry-After`` honoured) up to
``max_attempts``, all within ``total_timeout``, then reported permanent
(``FetchRejected`` with the last code). See docs/fetching.md for codes and defaults.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from shared.errors import FetchRejected, PolicyViolation, TransientError
from shared.netguard import DEFAULT_USER_AGENT, NetPolicy, check_url_static, guarded_session
from shared.retry import GiveUp, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 425, 429})
SNIFF_BYTES = 64


@dataclass(frozen=True)
class FetchOptions:
    connect_timeout: float = 5.0  # per TCP connect
    read_timeout: float = 15.0  # max silence between two reads
    total_timeout: float = 60.0  # whole fetch: all attempts, redirects and backoff sleeps
    max_bytes: int = 25 * 1024 * 1024
    max_redirects: int = 5
    max_attempts: int = 4  # first try + retries
    backoff_base: float = 0.5
    backoff_max: float = 30.0  # also caps an honoured Retry-After
    per_host_limit: int = 4
    user_agent: str = DEFAULT_USER_AGENT


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None
    final_url: str
    sniffed_format: str | None
    attempts: int


def sniff_format(head: bytes) -> str | None:
    """Image format from the leading bytes (magic numbers), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 18:
        dib = int.from_bytes(head[14:18], "little")
        if dib in (12, 16, 40, 52, 56, 64, 108, 124):
            return "BMP"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        size = min(int.from_bytes(head[:4], "big"), len(head))
        brands = [head[8:12]] + [head[i : i + 4] for i in range(16, size - 3, 4)]
        if b"avif" in brands or b"avis" in brands:
            return "AVIF"
    return None


class _HostLimiter:
    """One semaphore per ``host:port``, dropped when nobody holds or waits on it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._sems: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        sem, users = self._sems.get(key, (asyncio.Semaphore(self._limit), 0))
        self._sems[key] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._sems[key]
            if users <= 1:
                del self._sems[key]
            else:
                self._sems[key] = (sem, users - 1)


@contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    """Map aiohttp/OS errors to TransientError or FetchRejected with stable codes."""
    try:
        yield
    except (PolicyViolation, FetchRejected, TransientError):
        raise
    except aiohttp.ClientConnectorDNSError as exc:
        msg = f"cannot resolve host of {url}: {exc.os_error}"
        if getattr(exc.os_error, "errno", None) == socket.EAI_AGAIN:
            raise TransientError(msg, code="dns_failed") from exc
        raise FetchRejected(msg, code="dns_failed") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise TransientError(f"timed out fetching {url}", code="timeout") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
        raise TransientError(
            f"connection failed for {url}: {exc!r}", code="connection_failed"
        ) from exc
    except aiohttp.InvalidURL as exc:
        raise FetchRejected(f"invalid URL {url}: {exc}", code="invalid_url") from exc
    except aiohttp.ClientResponseError as exc:
        raise FetchRejected(
            f"malformed response from {url}: {exc.message}", code="bad_response"
        ) from exc


class Fetcher:
    """Reusable image fetcher; one per process (or per consumer) is enough."""

    def __init__(
        self,
        policy: NetPolicy,
        options: FetchOptions = FetchOptions(),
        *,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self.options = options
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._limiter = _HostLimiter(options.per_host_limit)
        self.retry = RetryPolicy(base=options.backoff_base, cap=options.backoff_max,
                                 max_attempts=options.max_attempts)

    async def __aenter__(self) -> Fetcher:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            o = self.options
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=o.connect_timeout, sock_read=o.read_timeout
            )
            self._session = guarded_session(
                self.policy, resolver=self._resolver, timeout=timeout, user_agent=o.user_agent
            )
        return self._session

    async def fetch(self, url: str) -> Fetched:
        """Fetch ``url``; raise PolicyViolation or FetchRejected (with a stable code)."""
        check_url_static(url, self.policy)  # fail fast, before any DNS or socket
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.total_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout_at(deadline):
                    data, ctype, final_url, fmt = await self._attempt(url)
                return Fetched(data, ctype, final_url, fmt, attempt)
            except TimeoutError as exc:
                raise FetchRejected(
                    f"gave up on {url}: total time budget of "
                    f"{self.options.total_timeout:g}s exhausted after {attempt} attempt(s)",
                    code="timeout",
                ) from exc
            except TransientError as exc:  # anything else propagates: not ours to retry
                decision = self.retry.decide(exc, attempt)
                if isinstance(decision, GiveUp) or loop.time() + decision.delay >= deadline:
                    raise FetchRejected(
                        f"gave up after {attempt} attempt(s): {exc.message}", code=exc.code
                    ) from exc
                delay = decision.delay
                log.info("fetch %s failed (%s), retry %d in %.2fs", url, exc.code, attempt, delay)
                await asyncio.sleep(delay)

    async def _attempt(self, url: str) -> tuple[bytes, str | None, str, str]:
        session = self._ensure_session()
        current = url
        for hop in range(self.options.max_redirects + 1):
            check_url_static(current, self.policy)
            parsed = URL(current)
            async with self._limiter.hold(f"{parsed.host}:{parsed.port}"):
                with _translate_errors(current):
                    async with session.get(current, allow_redirects=False) as resp:
                        if resp.status not in REDIRECT_STATUSES:
                            return await self._read(resp, current)
                        target = self._redirect_target(current, resp.headers.get("Location"))
            log.debug("redirect %d: %s -> %s", hop + 1, current, target)
            current = target
        raise FetchRejected(
            f"more than {self.options.max_redirects} redirects starting at {url}",
            code="too_many_redirects",
        )

    @staticmethod
    def _redirect_target(current: str, location: str | None) -> str:
        if not location:
            raise FetchRejected(f"redirect without Location from {current}", code="bad_redirect")
        try:
            return str(URL(current).join(URL(location.strip())))
        except (ValueError, TypeError) as exc:
            raise FetchRejected(f"bad redirect Location {location!r}", code="bad_redirect") from exc

    async def _read(
        self, resp: aiohttp.ClientResponse, url: str
    ) -> tuple[bytes, str | None, str, str]:
        status = resp.status
        if status >= 500 or status in RETRYABLE_STATUSES:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise TransientError(
                f"{url} answered HTTP {status}", code=f"http_{status}", retry_after=retry_after
            )
        if not 200 <= status < 300:
            raise FetchRejected(f"{url} answered HTTP {status}", code=f"http_{status}")
        limit = self.options.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise FetchRejected(
                f"{url} declares {resp.content_length} bytes, limit is {limit}", code="too_large"
            )
        buf = bytearray()
        fmt: str | None = None
        async for chunk in resp.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                raise FetchRejected(f"{url} sent more than {limit} bytes", code="too_large")
            if fmt is None and len(buf) >= SNIFF_BYTES:
                fmt = self._sniff_or_reject(bytes(buf[:SNIFF_BYTES]), resp, url)
        if not buf:
            raise FetchRejected(f"{url} returned an empty body", code="empty_body")
        if fmt is None:
            fmt = self._sniff_or_reject(bytes(buf), resp, url)
        return bytes(buf), resp.headers.get("Content-Type"), url, fmt

    @staticmethod
    def _sniff_or_reject(head: bytes, resp: aiohttp.ClientResponse, url: str) -> str:
        fmt = sniff_format(head)
        if fmt is None:
            ctype = resp.headers.get("Content-Type", "(none)")
            raise FetchRejected(
                f"{url} is not a supported image (Content-Type {ctype})", code="not_an_image"
            )
        return fmt
