"""Validation of single cells: serial number, product name and image URLs.

Each checker returns ``(value, problem)`` or a problem, where a problem is a
``(code, message)`` pair; the scanner adds line, column and offending value.
"""

from __future__ import annotations

import re
from array import array
from urllib.parse import urlsplit

from services.ingest.csv_types import CsvLimits

Problem = tuple[str, str]

MAX_SERIAL_DIGITS = 18  # fits a signed 64-bit integer
_SERIAL = re.compile(r"0*([0-9]+)\.?")
_NUMBERISH = re.compile(r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?\.?")
_NAME_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_URL_SPLIT = re.compile(r"[,\r\n]")

# Common shape accepted without further parsing: http(s)://host[/path?query#fragment],
# ASCII only, no port, no userinfo, no backslash, no whitespace or control characters.
_URL_FAST = re.compile(
    r"https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?:[/?#][!-\[\]-~]*)?", re.ASCII
)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_URL_SPACE = re.compile(r"\s")
_URL_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")
_HOST_BAD_CHAR = re.compile(r"[^\w.\-:%]")

_COMMA_HINT = (
    "URLs in the cell are separated by commas, so a comma inside a URL must be written as %2C."
)


def check_serial(raw: str) -> tuple[int | None, Problem | None]:
    """A serial is a positive integer, optionally followed by one dot (``1.``)."""
    text = raw.strip()
    if not text:
        return None, ("serial_missing", "Give every row a serial number (1, 2, 3, ...).")
    match = _SERIAL.fullmatch(text)
    if match is None:
        if _NUMBERISH.fullmatch(text) and text.startswith("-"):
            return None, ("serial_not_positive", "Serial numbers must be 1 or greater.")
        return None, (
            "serial_not_integer",
            "Serial numbers must be whole numbers written with digits only, such as 7 or 7.",
        )
    digits = match.group(1)
    if len(digits) > MAX_SERIAL_DIGITS:
        return None, (
            "serial_too_large",
            f"Serial numbers may have at most {MAX_SERIAL_DIGITS} digits.",
        )
    serial = int(digits)
    if serial == 0:
        return None, ("serial_not_positive", "Serial numbers must be 1 or greater.")
    return serial, None


def check_name(raw: str, limits: CsvLimits) -> tuple[str, Problem | None]:
    name = raw.strip()
    if not name:
        return name, ("name_missing", "Give every row a product name.")
    if len(name) > limits.max_name_length:
        return name, (
            "name_too_long",
            f"Product names may be at most {limits.max_name_length} characters "
            f"(this one has {len(name)}); shorten it.",
        )
    if "\n" in name or "\r" in name:
        return name, (
            "name_line_break",
            "The product name spans several lines. Put it on one line; if that was not "
            'intended, look for an unbalanced double quote (") on this line.',
        )
    if _NAME_BAD.search(name):
        return name, (
            "name_invalid_character",
            "The product name contains control characters; remove them.",
        )
    return name, None


def split_urls(cell: str) -> list[str]:
    """Split a URL cell on commas and line breaks; trim items; drop empty ones."""
    if "," not in cell and "\n" not in cell and "\r" not in cell:
        item = cell.strip()
        return [item] if item else []
    return [s for s in (p.strip() for p in _URL_SPLIT.split(cell)) if s]


def check_url(url: str, limits: CsvLimits) -> Problem | None:
    """Check one (already trimmed) URL item. ``None`` means it is acceptable."""
    if len(url) > limits.max_url_length:
        return (
            "url_too_long",
            f"URLs may be at most {limits.max_url_length} characters (this one has {len(url)}).",
        )
    if _URL_FAST.fullmatch(url):
        return None
    if _URL_SPACE.search(url):
        return (
            "url_whitespace",
            "The URL contains whitespace. Separate URLs with commas, and write spaces inside "
            "a URL as %20.",
        )
    if _URL_BAD_CHAR.search(url):
        return (
            "url_invalid_character",
            "The URL contains a control character or a backslash; remove it or percent-encode it.",
        )
    scheme_match = _SCHEME.match(url)
    rest = url[scheme_match.end() :] if scheme_match else ""
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    if not scheme_match or ("." in scheme and not rest.startswith("//")):
        return (
            "url_scheme_missing",
            "Each URL must start with http:// or https://. " + _COMMA_HINT,
        )
    if scheme not in ("http", "https"):
        return (
            "url_scheme",
            f"Only http:// and https:// URLs are accepted, not {scheme}:. "
            "Link to the image over the web.",
        )
    if not rest.startswith("//"):
        return ("url_host_missing", f"Write the URL as {scheme}://host/path.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("url_invalid", "The URL is malformed (check the host name and port).")
    if "@" in parts.netloc:
        return (
            "url_credentials",
            "URLs must not contain a user name or password (user:pass@); use a public link.",
        )
    host = parts.hostname
    if not host:
        return ("url_host_missing", f"The URL has no host name; write it as {scheme}://host/path.")
    if _HOST_BAD_CHAR.search(host) or host.strip(".") == "":
        return ("url_host_invalid", "The host name of the URL contains invalid characters.")
    if port == 0:
        return ("url_invalid", "The URL has an invalid port number.")
    return None


class SerialRegistry:
    """Remembers the first line of each serial number, compactly.

    Serials below ``dense_limit`` (the usual 1..N) live in a growable array of
    line numbers (4 bytes each); others in a dict.
    """

    def __init__(self, dense_limit: int) -> None:
        self._dense = array("I")
        self._sparse: dict[int, int] = {}
        self._limit = dense_limit

    def first_line(self, serial: int, line: int) -> int:
        """Record ``serial`` at ``line`` unless seen; return the line it was first seen on."""
        if serial >= self._limit or line >= 1 << 32:
            return self._sparse.setdefault(serial, line)
        dense = self._dense
        if serial >= len(dense):
            grow = max(serial + 1 - len(dense), len(dense), 1024)
            dense.frombytes(bytes(grow * dense.itemsize))
        first = dense[serial]
        if first:
            return first
        dense[serial] = line
        return line
