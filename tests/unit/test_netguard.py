"""The address guard: every forbidden form is refused before a connection is made."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from services.processor.fetch import Fetcher, FetchOptions
from shared.errors import FetchRejected, PolicyViolation, TransientError
from shared.netguard import (
    GuardedResolver,
    NetPolicy,
    check_ip,
    check_url,
    check_url_static,
    guarded_session,
    parse_host,
)


class StubResolver(AbstractResolver):
    """Fixed answers; records every lookup."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.answers:
            raise OSError(socket.EAI_NONAME, f"unknown host {host}")
        out: list[ResolveResult] = []
        for addr in self.answers[host]:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            out.append(ResolveResult(hostname=host, host=addr, port=port, family=fam,
                                     proto=0, flags=0))  # fmt: skip
        return out

    async def close(self) -> None:
        return None


@dataclass
class Counter:
    port: int
    connections: list[int] = field(default_factory=list)


@pytest.fixture
async def loopback_counter() -> AsyncIterator[Counter]:
    """A TCP server on 127.0.0.1 that counts connections (the would-be victim)."""
    counter = Counter(port=0)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter.connections.append(1)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    counter.port = server.sockets[0].getsockname()[1]
    async with server:
        yield counter


# Every one of these is a loopback/private/special address in disguise.
LITERAL_HOSTS = [
    "127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f.1", "127.1", "0x7f000001",
    "017700000001", "0177.0x0.1", "127.0.0.1.", "127.000.000.001", "0", "0x0", "10.1",
    "0xa000001", "192.168.1", "0xc0.0xa8.0x1.0x1", "169.254.169.254", "0xa9fea9fe",
    "2852039166", "100.64.0.1", "198.18.0.1", "192.0.2.1", "203.0.113.9", "224.0.0.1",
    "240.0.0.1", "255.255.255.255", "[::1]", "[::]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "[::127.0.0.1]", "[::ffff:0:127.0.0.1]", "[fe80::1%25eth0]", "[fe80::1]", "[fc00::1]",
    "[fd12:3456::1]", "[fec0::1]", "[ff02::1]", "[2001:db8::1]", "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]", "[64:ff9b::7f00:1]", "[64:ff9b::10.0.0.1]", "[64:ff9b:1::1]",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]", "[2001:4860::5efe:7f00:1]",
    "[2001:4860::200:5efe:a00:1]", "[::5efe:127.0.0.1]", "[0:0:0:0:0:ffff:127.0.0.1]",
]  # fmt: skip


@pytest.mark.parametrize("host", LITERAL_HOSTS)
def test_literal_forms_refused_statically(host: str) -> None:
    with pytest.raises(PolicyViolation) as err:
        check_url_static(f"http://{host}/img.png", NetPolicy())
    assert err.value.code == "forbidden_address"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
        ("192.168.257", "192.168.1.1"), ("1.0x10203", "1.1.2.3"), ("0X7F.0.0.1", "127.0.0.1"),
    ],
)  # fmt: skip
def test_parse_host_like_inet_aton(host: str, expected: str) -> None:
    assert parse_host(host) == ipaddress.IPv4Address(expected)
    assert socket.inet_aton(host) == ipaddress.IPv4Address(expected).packed


BAD_HOSTS = ["1.2.3.4.5", "foo.0x7f", "09.0.0.1", "256.0.0.1", "1.2.3.256", "4294967296",
             "ex%41mple.com", "a b.com", "-bad.com"]  # fmt: skip


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_malformed_hosts_refused(host: str) -> None:
    with pytest.raises(PolicyViolation) as err:
        parse_host(host)
    assert err.value.code == "invalid_url"


@given(
    st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16", "169.254.0.0/16"]),
    st.integers(min_value=0, max_value=2**16 - 1),
    st.sampled_from(["dec", "hex", "oct", "dotted_hex", "two_part"]),
)
def test_any_notation_of_private_v4_refused(net: str, offset: int, notation: str) -> None:
    network = ipaddress.IPv4Network(net)
    ip = network[offset % network.num_addresses]
    n, octets = int(ip), ip.packed
    host = {
        "dec": str(n),
        "hex": hex(n),
        "oct": "0" + oct(n)[2:],
        "dotted_hex": ".".join(hex(o) for o in octets),
        "two_part": f"{octets[0]}.{n & 0xFFFFFF}",
    }[notation]
    assert parse_host(host) == ip
    with pytest.raises(PolicyViolation):
        check_url_static(f"http://{host}/", NetPolicy())


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1", "[::ffff:127.0.0.1]",
                                  "[::127.0.0.1]", "127.0.0.1"])  # fmt: skip
async def test_literals_never_connect(host: str, loopback_counter: Counter) -> None:
    policy = NetPolicy(allowed_ports=(loopback_counter.port,))
    url = f"http://{host}:{loopback_counter.port}/x.png"
    async with guarded_session(policy) as session:
        with pytest.raises(PolicyViolation) as err:
            await session.get(url)
    assert err.value.code == "forbidden_address"
    async with Fetcher(policy, FetchOptions(max_attempts=1)) as fetcher:
        with pytest.raises(PolicyViolation):
            await fetcher.fetch(url)
    assert loopback_counter.connections == []


STUB_ANSWERS = {
    "evil.test": ["127.0.0.1"],
    "mixed.test": ["93.184.215.14", "10.0.0.1"],
    "mixed6.test": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "fd00::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "nat64.test": ["64:ff9b::a00:1"],
    "sixtofour.test": ["2002:c0a8:101::1"],
    "linklocal.test": ["fe80::1%eth0"],
    "cgnat.test": ["100.100.100.100"],
    "zero.test": ["0.0.0.0"],
}


@pytest.mark.parametrize("name", sorted(STUB_ANSWERS))
async def test_hostnames_resolving_to_forbidden_refused(name: str) -> None:
    with pytest.raises(PolicyViolation) as err:
        await check_url(f"https://{name}/a.jpg", NetPolicy(), StubResolver(STUB_ANSWERS))
    assert err.value.code == "forbidden_address"


@pytest.mark.parametrize("name", ["evil.test", "mixed.test", "mapped.test"])
async def test_session_refuses_resolved_forbidden_before_connect(
    name: str, loopback_counter: Counter
) -> None:
    answers = {
        k: [a if a != "10.0.0.1" else "127.0.0.1" for a in v] for k, v in STUB_ANSWERS.items()
    }
    policy = NetPolicy(allowed_ports=(loopback_counter.port,))
    async with guarded_session(policy, resolver=StubResolver(answers)) as session:
        with pytest.raises(PolicyViolation):
            await session.get(f"http://{name}:{loopback_counter.port}/")
    assert loopback_counter.connections == []


async def test_resolver_result_is_what_connector_uses(loopback_counter: Counter) -> None:
    """One lookup per request; the checked address is the one connected to."""
    stub = StubResolver({"img.test": ["127.0.0.1"]})
    policy = NetPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    session = guarded_session(policy, resolver=stub)
    async with session, session.get(f"http://img.test:{loopback_counter.port}/") as resp:
        assert resp.status == 204
    assert stub.calls == ["img.test"]
    assert loopback_counter.connections == [1]


async def test_guarded_resolver_checks_literal_without_dns() -> None:
    stub = StubResolver({})
    with pytest.raises(PolicyViolation):
        await GuardedResolver(NetPolicy(), stub).resolve("0x7f.1", 80)
    assert stub.calls == []


def test_public_addresses_allowed() -> None:
    policy = NetPolicy()
    for ip in ["93.184.215.14", "8.8.8.8", "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
               "::ffff:93.184.215.14", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1"]:  # fmt: skip
        check_ip(ip, policy)
    check_url_static("https://93.184.215.14/a.png", policy)
    check_url_static("http://images.example.org/a.png", policy)


class FailingResolver(StubResolver):
    def __init__(self, error: BaseException | None) -> None:
        super().__init__({})
        self.error = error

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self.error is not None:
            raise self.error
        await asyncio.sleep(3600)  # never answers
        return []


@pytest.mark.parametrize(("error", "kind"), [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), FetchRejected),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), TransientError),
    (None, TransientError),  # no answer within dns_timeout
])
async def test_a_name_that_does_not_resolve_is_refused_but_a_dns_outage_is_transient(
        error: BaseException | None, kind: type[Exception]) -> None:
    with pytest.raises(kind) as err:
        await check_url("https://cdn.test/a.png", NetPolicy(), FailingResolver(error),
                        dns_timeout=0.05)
    assert getattr(err.value, "code", None) == "dns_failed"


async def test_hostname_resolving_to_public_passes() -> None:
    await check_url("https://cdn.test/a.png", NetPolicy(), StubResolver({"cdn.test": ["8.8.8.8"]}))


def test_allow_networks_open_private_ranges_and_ports() -> None:
    policy = NetPolicy.from_strings("127.0.0.0/8, ::1/128", "80,443")
    check_ip("127.0.0.1", policy)
    check_ip("::1", policy)
    check_url_static("http://127.0.0.1:54321/x.png", policy)  # allow-listed: port exempt
    check_url_static("http://[::1]:8080/x.png", policy)
    with pytest.raises(PolicyViolation):
        check_ip("10.0.0.1", policy)


def test_ports_and_schemes() -> None:
    policy = NetPolicy()
    with pytest.raises(PolicyViolation) as err:
        check_url_static("http://93.184.215.14:22/", policy)
    assert err.value.code == "forbidden_port"
    with pytest.raises(PolicyViolation) as err:
        check_url_static("http://images.example.org:8080/", policy)
    assert err.value.code == "forbidden_port"
    for url in ["ftp://93.184.215.14/a", "file:///etc/passwd", "gopher://x.org/", "//x.org/a"]:
        with pytest.raises(PolicyViolation) as err:
            check_url_static(url, policy)
        assert err.value.code == "unsupported_scheme"


def test_policy_from_strings_errors() -> None:
    with pytest.raises(ValueError, match="invalid network"):
        NetPolicy.from_strings("127.0.0.0/33", "80")
    with pytest.raises(ValueError, match="invalid port"):
        NetPolicy.from_strings("", "80,http")
    assert NetPolicy.from_strings("", "") == NetPolicy(allowed_ports=())
