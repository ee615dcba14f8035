"""Parsing hosts and IP addresses the way browsers do (WHATWG URL host
parsing, ``inet_aton`` notations), and unwrapping IPv4 addresses carried inside
IPv6 ones. Pure functions; the policy that uses them is in ``shared.netguard``.
"""

from __future__ import annotations

import ipaddress
import re

from shared.errors import PolicyViolation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_HOSTNAME_RE = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)
_HEX_RE = re.compile(r"^0x[0-9a-f]*$")
_DEC_RE = re.compile(r"^[0-9]+$")
_OCT_RE = re.compile(r"^0[0-7]+$")


def _forbidden(message: str, code: str = "forbidden_address") -> PolicyViolation:
    return PolicyViolation(message, code=code)


def parse_ip(value: str | IPAddress) -> IPAddress:
    """A strict IP address (zone id dropped); ``::ffff:a.b.c.d`` becomes IPv4."""
    if isinstance(value, str):
        try:
            ip: IPAddress = ipaddress.ip_address(value.split("%", 1)[0])
        except ValueError as exc:
            raise _forbidden(f"not an IP address: {value!r}") from exc
    else:
        ip = value
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(int(ip))
        if ip in _MAPPED:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses carried inside an IPv6 address, labelled by mechanism."""
    n = int(ip)
    low32 = ipaddress.IPv4Address(n & 0xFFFFFFFF)
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if n >> 32 == 0 and n > 1:
        found.append(("IPv4-compatible", low32))
    if n >> 32 == 0xFFFF0000:
        found.append(("IPv4-translated", low32))
    if ip in NAT64:
        found.append(("NAT64", low32))
    if ip in _SIXTOFOUR:
        found.append(("6to4", ipaddress.IPv4Address((n >> 80) & 0xFFFFFFFF)))
    if ip in _TEREDO:
        found.append(("Teredo server", ipaddress.IPv4Address((n >> 64) & 0xFFFFFFFF)))
        found.append(("Teredo client", ipaddress.IPv4Address(~n & 0xFFFFFFFF)))
    if (n >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP interface id (u/l bit either way)
        found.append(("ISATAP", low32))
    return found


def _parse_ipv4_number(part: str) -> int | None:
    if _HEX_RE.match(part):
        return int(part[2:] or "0", 16)
    if _OCT_RE.match(part):
        return int(part, 8)
    if part == "0" or (_DEC_RE.match(part) and not part.startswith("0")):
        return int(part)
    return None


def parse_host(host: str) -> IPAddress | str:
    """WHATWG-style host parse: an IP address (any notation) or a lower-case name.

    Raises PolicyViolation(code="invalid_url") for hosts a browser would reject,
    including a name ending in a numeric label that is not a valid IPv4 address.
    """
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return parse_ip(ipaddress.IPv6Address(h.replace("%25", "%", 1).split("%", 1)[0]))
        except ValueError as exc:
            raise _forbidden(f"invalid IPv6 host {host!r}", "invalid_url") from exc
    parts = h.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1] if parts else ""
    if _DEC_RE.match(last) or _HEX_RE.match(last):
        numbers = [_parse_ipv4_number(p) for p in parts]
        if len(parts) > 4 or any(n is None for n in numbers):
            raise _forbidden(f"invalid IPv4 host {host!r}", "invalid_url")
        nums = [n for n in numbers if n is not None]
        if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
            raise _forbidden(f"IPv4 host out of range {host!r}", "invalid_url")
        value = nums[-1]
        for i, n in enumerate(nums[:-1]):
            value += n << (8 * (3 - i))
        return ipaddress.IPv4Address(value)
    if not _HOSTNAME_RE.match(h.rstrip(".")) or len(h) > 253:
        raise _forbidden(f"invalid host name {host!r}", "invalid_url")
    return h
