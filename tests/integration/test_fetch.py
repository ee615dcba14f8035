"""The fetcher against local misbehaving HTTP servers (127.0.0.1, free ports)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from services.processor.fetch import Fetcher, FetchOptions, parse_retry_after, sniff_format
from shared.errors import FetchRejected, PolicyViolation
from shared.netguard import NetPolicy, check_url, guarded_session

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 80
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 80
HTML = b"<!doctype html><html><body>" + b"x" * 200 + b"</body></html>"
UA = "imgpipe-test/1.0 (+https://github.com/imgpipe/imgpipe)"
POLICY_ONLY_127_0_0_1 = ipaddress.ip_network("127.0.0.1/32")
OPTS = FetchOptions(
    connect_timeout=1.0, read_timeout=0.4, total_timeout=6.0, max_bytes=256 * 1024,
    max_attempts=3, backoff_base=0.01, backoff_max=0.05, per_host_limit=2, user_agent=UA,
)  # fmt: skip


@dataclass
class Srv:
    base: str
    hits: Counter[str] = field(default_factory=Counter)
    user_agents: list[str] = field(default_factory=list)
    active: int = 0
    max_active: int = 0


def _bind(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@pytest.fixture
async def victim() -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.2 (not allow-listed) counting TCP connections."""
    conns: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        writer.close()

    server = await asyncio.start_server(on_conn, sock=_bind("127.0.0.2"))
    async with server:
        yield server.sockets[0].getsockname()[1], conns


@pytest.fixture
async def srv(victim: tuple[int, list[int]]) -> AsyncIterator[Srv]:
    victim_port = victim[0]
    state = Srv(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        state.hits[name] += 1
        state.user_agents.append(request.headers.get("User-Agent", ""))
        n = state.hits[name]
        if name == "img.png":
            return web.Response(body=PNG, content_type="image/png")
        if name == "wrongtype":
            return web.Response(body=JPEG, content_type="text/html")
        if name == "html":
            return web.Response(body=HTML, content_type="image/jpeg")
        if name == "empty":
            return web.Response(body=b"", content_type="image/png")
        if name == "404":
            return web.Response(status=404, text="nope")
        if name == "flaky":
            return web.Response(status=500) if n == 1 else web.Response(body=PNG)
        if name == "always503":
            return web.Response(status=503)
        if name == "ratelimited":
            if n == 1:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.Response(body=PNG)
        if name == "loop":
            raise web.HTTPFound("/loop")
        if name.startswith("chain"):
            left = int(name[5:])
            raise web.HTTPFound(f"/chain{left - 1}" if left else "/img.png")
        if name == "to-victim":
            raise web.HTTPFound(f"http://127.0.0.2:{victim_port}/img.png")
        if name == "to-v6-loopback":
            raise web.HTTPFound(f"http://[::1]:{victim_port}/img.png")
        if name == "to-decimal":
            raise web.HTTPFound(f"http://2130706434:{victim_port}/img.png")
        if name == "to-file":
            raise web.HTTPFound("file:///etc/passwd")
        if name == "no-location":
            return web.Response(status=302)
        if name == "oversize":
            resp = web.StreamResponse(headers={"Content-Length": str(10**9)})
            await resp.prepare(request)
            await resp.write(PNG)
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        try:
            if name == "stall":
                await resp.write(PNG[:16])
                await asyncio.sleep(3)
            elif name == "drip":
                await resp.write(PNG)
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    await resp.write(b"\x00")
            elif name == "endless":
                await resp.write(PNG)
                for _ in range(10_000):
                    await resp.write(b"\x00" * 65536)
            elif name == "slow-ok":
                state.active += 1
                state.max_active = max(state.max_active, state.active)
                await asyncio.sleep(0.15)
                state.active -= 1
                await resp.write(PNG)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.router.add_route("*", "/{name}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    sock = _bind("127.0.0.1")
    site = web.SockSite(runner, sock)
    await site.start()
    state.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher(NetPolicy(allow_networks=(POLICY_ONLY_127_0_0_1,)), OPTS) as f:
        yield f


async def rejected(fetcher: Fetcher, url: str) -> FetchRejected:
    with pytest.raises(FetchRejected) as err:
        await fetcher.fetch(url)
    return err.value


async def test_ok_and_user_agent(fetcher: Fetcher, srv: Srv) -> None:
    got = await fetcher.fetch(f"{srv.base}/img.png")
    assert (got.data, got.sniffed_format, got.attempts) == (PNG, "PNG", 1)
    assert got.content_type == "image/png"
    assert srv.user_agents == [UA]


async def test_wrong_content_type_on_real_image_accepted(fetcher: Fetcher, srv: Srv) -> None:
    got = await fetcher.fetch(f"{srv.base}/wrongtype")
    assert got.sniffed_format == "JPEG" and got.content_type.startswith("text/html")  # type: ignore[union-attr]


async def test_html_served_as_image(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/html")).code == "not_an_image"
    assert srv.hits["html"] == 1


async def test_empty_body(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/empty")).code == "empty_body"


async def test_404_fails_at_once(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/404")).code == "http_404"
    assert srv.hits["404"] == 1


async def test_500_then_200_succeeds_after_retry(fetcher: Fetcher, srv: Srv) -> None:
    got = await fetcher.fetch(f"{srv.base}/flaky")
    assert got.attempts == 2 and got.data == PNG


async def test_503_exhausts_retries(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/always503")).code == "http_503"
    assert srv.hits["always503"] == OPTS.max_attempts


async def test_429_honours_retry_after(srv: Srv) -> None:
    opts = FetchOptions(backoff_base=0.01, backoff_max=5.0, total_timeout=5.0)
    async with Fetcher(NetPolicy(allow_networks=(POLICY_ONLY_127_0_0_1,)), opts) as f:
        start = time.monotonic()
        got = await f.fetch(f"{srv.base}/ratelimited")
    assert got.attempts == 2 and time.monotonic() - start >= 0.95


async def test_stalled_body_read_timeout(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/stall")).code == "timeout"
    assert srv.hits["stall"] == OPTS.max_attempts


async def test_slow_drip_hits_total_budget(srv: Srv) -> None:
    opts = FetchOptions(read_timeout=1.0, total_timeout=1.0, backoff_base=0.01)
    async with Fetcher(NetPolicy(allow_networks=(POLICY_ONLY_127_0_0_1,)), opts) as f:
        start = time.monotonic()
        err = await rejected(f, f"{srv.base}/drip")
    assert err.code == "timeout" and time.monotonic() - start < 1.5


async def test_endless_body_capped(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/endless")).code == "too_large"


async def test_oversize_content_length(fetcher: Fetcher, srv: Srv) -> None:
    assert (await rejected(fetcher, f"{srv.base}/oversize")).code == "too_large"


async def test_redirects_followed_and_limited(fetcher: Fetcher, srv: Srv) -> None:
    got = await fetcher.fetch(f"{srv.base}/chain4")
    assert got.final_url == f"{srv.base}/img.png" and got.data == PNG
    assert (await rejected(fetcher, f"{srv.base}/loop")).code == "too_many_redirects"
    assert srv.hits["loop"] == OPTS.max_redirects + 1
    assert (await rejected(fetcher, f"{srv.base}/no-location")).code == "bad_redirect"


@pytest.mark.parametrize(
    ("path", "code"),
    [("to-victim", "forbidden_address"), ("to-v6-loopback", "forbidden_address"),
     ("to-decimal", "forbidden_address"), ("to-file", "unsupported_scheme")],
)  # fmt: skip
async def test_redirect_to_forbidden_target(
    fetcher: Fetcher, srv: Srv, victim: tuple[int, list[int]], path: str, code: str
) -> None:
    with pytest.raises(PolicyViolation) as err:
        await fetcher.fetch(f"{srv.base}/{path}")
    assert err.value.code == code
    assert srv.hits[path] == 1  # permanent: not retried
    assert victim[1] == []  # no TCP connection ever reached 127.0.0.2


async def test_direct_forbidden_target_never_connected(
    fetcher: Fetcher, victim: tuple[int, list[int]]
) -> None:
    with pytest.raises(PolicyViolation):
        await fetcher.fetch(f"http://127.0.0.2:{victim[0]}/img.png")
    assert victim[1] == []


async def test_connection_refused_is_retried() -> None:
    sock = _bind("127.0.0.1")
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with Fetcher(NetPolicy(allow_networks=(POLICY_ONLY_127_0_0_1,)), OPTS) as f:
        err = await rejected(f, f"http://127.0.0.1:{port}/img.png")
    assert err.code == "connection_failed"


async def test_per_host_limit(fetcher: Fetcher, srv: Srv) -> None:
    results = await asyncio.gather(*(fetcher.fetch(f"{srv.base}/slow-ok") for _ in range(6)))
    assert all(r.data == PNG for r in results)
    assert srv.max_active == OPTS.per_host_limit


def test_sniff_and_retry_after_helpers() -> None:
    assert sniff_format(b"GIF89a" + b"\x00" * 10) == "GIF"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf") == "AVIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") is None
    assert sniff_format(b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00") == "BMP"
    assert sniff_format(b"II*\x00\x08\x00") == "TIFF"
    assert sniff_format(HTML) is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


async def test_guarded_session_checks_redirect_hops(
    srv: Srv, victim: tuple[int, list[int]]
) -> None:
    """A webhook-style session that lets aiohttp follow redirects still checks each hop."""
    session = guarded_session(NetPolicy(allow_networks=(POLICY_ONLY_127_0_0_1,)))
    async with session:
        with pytest.raises(PolicyViolation) as err:
            await session.post(f"{srv.base}/to-victim", json={"ok": True})
        assert err.value.code == "forbidden_address"
        async with session.get(f"{srv.base}/chain2") as resp:
            assert resp.status == 200 and await resp.read() == PNG
    assert victim[1] == []


async def test_check_url_with_real_resolver() -> None:
    with pytest.raises(PolicyViolation) as err:
        await check_url("http://localhost/hook", NetPolicy())
    assert err.value.code == "forbidden_address"
    with pytest.raises(FetchRejected) as err2:
        await check_url("https://no-such-host.invalid/hook", NetPolicy())
    assert err2.value.code == "dns_failed"
