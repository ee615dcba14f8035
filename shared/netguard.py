"""Address guard for every outbound request to an untrusted URL (SSRF defence).

Approach: *allow only globally routable addresses*. An address passes when it is
in ``NetPolicy.allow_networks`` or when ``ipaddress`` calls it global **and** it is
in none of the explicit deny networks below (which repeat what ``is_global``
should catch, so behaviour does not depend on the Python patch level). IPv6
addresses that carry an IPv4 address (mapped, compatible, SIIT, 6to4, NAT64,
Teredo, ISATAP) are unwrapped and the IPv4 address must pass too.

Hosts are parsed the way browsers (WHATWG URL) and ``inet_aton`` parse them, so
``2130706433``, ``0177.0.0.1``, ``0x7f.1`` and friends are IP literals, never
host names. Host names are resolved once by :class:`GuardedResolver`, which
checks every address and hands only those to the connector (no second lookup).
See docs/fetching.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_middlewares import ClientHandlerType
from yarl import URL

from shared.addresses import NAT64, IPAddress, IPNetwork, _forbidden, embedded_ipv4
from shared.addresses import parse_host as parse_host
from shared.addresses import parse_ip as parse_ip
from shared.errors import FetchRejected, PolicyViolation, TransientError

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "imgpipe/0.1 (+https://github.com/imgpipe/imgpipe)"
ALLOWED_SCHEMES = frozenset({"http", "https"})

_V4_DENY = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "255.255.255.255/32",
    )
)  # fmt: skip
_V6_DENY = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


@dataclass(frozen=True)
class NetPolicy:
    """What outbound requests may reach. Addresses in ``allow_networks`` are
    allowed even when private/loopback and are exempt from the port rule."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: tuple[int, ...] = (80, 443)

    @classmethod
    def from_strings(cls, allow_networks: str, allowed_ports: str) -> NetPolicy:
        """Parse ``"127.0.0.0/8,::1/128"`` and ``"80,443"``; ValueError if malformed."""
        nets: list[IPNetwork] = []
        for raw in (p.strip() for p in allow_networks.split(",")):
            if raw:
                try:
                    nets.append(ipaddress.ip_network(raw, strict=False))
                except ValueError as exc:
                    raise ValueError(f"invalid network in allow list: {raw!r} ({exc})") from exc
        ports: list[int] = []
        for raw in (p.strip() for p in allowed_ports.split(",")):
            if raw:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise ValueError(f"invalid port in allowed ports: {raw!r}")
                ports.append(int(raw))
        return cls(allow_networks=tuple(nets), allowed_ports=tuple(ports))

    def is_allowlisted(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow_networks)


def forbidden_reason(ip: IPAddress, policy: NetPolicy | None = None) -> str | None:
    """Why ``ip`` may not be contacted, or None if it may. Expects ``parse_ip`` output."""
    if policy is not None and policy.is_allowlisted(ip):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        for net4 in _V4_DENY:
            if ip in net4:
                return f"{ip} is in the non-public network {net4}"
    else:
        if ip in NAT64:  # well-known NAT64 prefix: as good as the IPv4 it carries
            return forbidden_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for label, v4 in embedded_ipv4(ip):
            inner = forbidden_reason(v4)
            if inner is not None:
                return f"{ip} embeds the {label} IPv4 address {v4}: {inner}"
        for net in _V6_DENY:
            if ip in net:
                return f"{ip} is in the non-public network {net}"
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return f"{ip} is not a globally routable address"
    return None


def check_ip(ip: str | IPAddress, policy: NetPolicy, port: int | None = None) -> None:
    """Raise PolicyViolation unless ``ip`` (and ``port``, if given) may be contacted."""
    addr = parse_ip(ip)
    reason = forbidden_reason(addr, policy)
    if reason is not None:
        raise _forbidden(f"refusing to contact {ip}: {reason}")
    if port is not None and port not in policy.allowed_ports and not policy.is_allowlisted(addr):
        raise _forbidden(f"port {port} is not allowed for {ip}", code="forbidden_port")


def _check_url_obj(url: URL, policy: NetPolicy) -> IPAddress | str:
    scheme = (url.scheme or "").lower()
    if scheme not in ALLOWED_SCHEMES:
        raise _forbidden(f"scheme {scheme or '(none)'!r} is not allowed", "unsupported_scheme")
    if not url.raw_host:
        raise _forbidden(f"URL has no host: {url}", "invalid_url")
    target = parse_host(url.raw_host)
    port = url.port
    if port is None or not 0 < port < 65536:
        raise _forbidden(f"invalid port in {url}", "forbidden_port")
    if isinstance(target, str):
        # A name: the port rule is final here unless an allow-listed network
        # could exempt it; then the resolver decides per address.
        if port not in policy.allowed_ports and not policy.allow_networks:
            raise _forbidden(f"port {port} is not allowed", "forbidden_port")
    else:
        check_ip(target, policy, port)
    return target


def check_url_static(url: str, policy: NetPolicy) -> None:
    """Scheme, port, host syntax and literal-IP checks; no DNS lookup."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise _forbidden(f"unparseable URL: {exc}", "invalid_url") from exc
    _check_url_obj(parsed, policy)


async def check_url(
    url: str,
    policy: NetPolicy,
    resolver: AbstractResolver | None = None,
    *,
    dns_timeout: float = 10.0,
) -> None:
    """``check_url_static`` plus resolving the host and checking every address.

    Raises PolicyViolation for a refused URL/address, FetchRejected(code="dns_failed")
    when the name does not resolve, TransientError(code="dns_failed") when the
    resolver fails for now (``EAI_AGAIN``, or no answer within ``dns_timeout`` s).
    """
    check_url_static(url, policy)
    parsed = URL(url)
    target = parse_host(parsed.raw_host or "")
    if not isinstance(target, str):
        return
    inner = resolver if resolver is not None else aiohttp.ThreadedResolver()
    guard = GuardedResolver(policy, inner)
    try:
        async with asyncio.timeout(dns_timeout):
            await guard.resolve(target, parsed.port or 0, socket.AF_UNSPEC)
    except TimeoutError as exc:  # the resolver is slow or away: worth asking again
        raise TransientError(f"resolving {target!r} took over {dns_timeout:g}s",
                             code="dns_failed") from exc
    except OSError as exc:
        if getattr(exc, "errno", None) == socket.EAI_AGAIN:  # a temporary failure
            raise TransientError(f"cannot resolve {target!r} right now: {exc!r}",
                                 code="dns_failed") from exc
        raise FetchRejected(f"cannot resolve {target!r}: {exc!r}", code="dns_failed") from exc
    finally:
        if resolver is None:
            await inner.close()


class GuardedResolver(AbstractResolver):
    """Resolve through ``inner``, refuse if ANY address is forbidden, return only
    the checked addresses (so the connector connects to exactly those)."""

    def __init__(self, policy: NetPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = parse_host(host)
        if not isinstance(target, str):  # a literal in any notation: never ask DNS
            check_ip(target, self._policy, port or None)
            fam = socket.AF_INET if target.version == 4 else socket.AF_INET6
            return [ResolveResult(hostname=host, host=str(target), port=port, family=fam,
                                  proto=0, flags=0)]  # fmt: skip
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        if not results:
            raise OSError(f"no addresses for {host!r}")
        for res in results:
            try:
                check_ip(res["host"], self._policy, port or None)
            except PolicyViolation as exc:
                log.warning("refused %s: resolves to forbidden %s", host, res["host"])
                raise _forbidden(f"{host} resolves to {res['host']}: {exc.message}",
                                 exc.code) from None  # fmt: skip
        return list(results)

    async def close(self) -> None:
        if self._owns_inner and self._inner is not None:
            await self._inner.close()


def guard_middleware(policy: NetPolicy) -> Any:
    """aiohttp client middleware checking every request (and every redirect hop
    aiohttp follows itself) before a connection is made. IP-literal hosts bypass
    resolvers in aiohttp, so this is where they are checked."""

    async def middleware(req: aiohttp.ClientRequest, handler: ClientHandlerType) -> Any:
        if req.proxy is not None:
            raise _forbidden("proxied requests are not allowed")
        _check_url_obj(req.url, policy)
        return await handler(req)

    return middleware


def guarded_session(
    policy: NetPolicy,
    *,
    resolver: AbstractResolver | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    headers: Sequence[tuple[str, str]] = (),
) -> aiohttp.ClientSession:
    """A ClientSession that cannot reach forbidden addresses or ports.

    Host names go through :class:`GuardedResolver` (DNS cache off); every request,
    including each redirect hop aiohttp follows, passes the guard middleware.
    Callers should still pass ``allow_redirects=False`` and follow by hand when
    they need their own hop limit or error codes (the image fetcher does).
    Environment proxies are ignored (``trust_env=False``).
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, resolver), use_dns_cache=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout if timeout is not None else aiohttp.ClientTimeout(total=30),
        headers=[("User-Agent", user_agent), *headers],
        middlewares=(guard_middleware(policy),),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
