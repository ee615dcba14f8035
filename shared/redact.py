"""Secrets that ride in URLs kept out of what people read: logs, the status
API, dead-letter errors.

Two forms: ``mask_url`` for one URL shown to a client (only
scheme://host[:port]/path stays), and ``redact`` for free text such as a log
line or an exception message, where every URL keeps its shape but loses its
``user:password@`` and its query values (``?token=…&w=…``), so a line still
says which URL it was about.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "…"
# scheme://user[:password]@  (userinfo has no '/', '@' or whitespace)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s\"'<>]+@")
# ?a=1&b=2 after a URL's path: each value, up to the next & # or quote/space
_QUERY_VALUE = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s\"'<>?#]*\?)([^\s\"'<>#]*)")
_PARAM = re.compile(r"=[^&;]*")


def mask_url(url: str | None) -> str | None:
    """The URL without what often carries a secret: the query becomes ``?…``, and
    any user:password@ and #fragment are dropped (scheme://host[:port]/path stays)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, MASK if parts.query else "", ""))


def redact(text: str) -> str:
    """Every URL in ``text`` without its credentials and query values."""
    if "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}***@", text)
    return _QUERY_VALUE.sub(lambda m: m.group(1) + _PARAM.sub(f"={MASK}", m.group(2)), text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line, traceback included, went through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
