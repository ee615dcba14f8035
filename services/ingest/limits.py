"""Upload size limit enforced on the raw request body, before any parsing.

Starlette spools a multipart file part to disk while parsing, so checking
``UploadFile.size`` afterwards bounds nothing: a chunked upload (no
Content-Length) could fill the disk first. :class:`BodyLimit` wraps the ASGI
app and counts the bytes the route actually receives.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.problems import problem

log = logging.getLogger(__name__)
# Room for the multipart boundaries, part headers and the small form fields.
MULTIPART_OVERHEAD = 64 * 1024


def too_large(max_upload_bytes: int, hint: str = "split the CSV into smaller files"
              ) -> JSONResponse:
    return problem(413, "file_too_large",
                   f"the upload is larger than {max_upload_bytes} bytes: {hint}")


class _BodyTooLarge(Exception):
    """Raised from ``receive`` into the route once the body passes the limit."""


def parse_content_length(value: str | None) -> int | None:
    """The declared length, None if absent; ValueError unless plain decimal digits."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise ValueError(value)
    return int(value)


class BodyLimit:
    """ASGI wrapper limiting the body of ``POST <path>`` to ``max_upload_bytes``
    plus :data:`MULTIPART_OVERHEAD`.

    - A declared Content-Length over the limit: 413 before anything is read.
    - A Content-Length that is not a plain decimal number: **400**
      (``bad_content_length``): the request is malformed, not too large (the
      HTTP server usually refuses such a request itself; this is the backstop).
    - No Content-Length (chunked) or a body longer than declared: bytes are
      counted as they arrive and the request is answered 413 as soon as the
      count passes the limit; the route sees an exception from ``receive``, so
      at most the limit ever reaches the multipart parser's temporary files.

    Every error has the JSON shape of the API's other errors.
    """

    def __init__(self, app: ASGIApp, *, path: str, max_upload_bytes: int,
                 overhead: int = MULTIPART_OVERHEAD,
                 hint: str = "split the CSV into smaller files") -> None:
        self.app = app
        self.path = path
        self.max_upload_bytes = max_upload_bytes
        self.limit = max_upload_bytes + overhead
        self.hint = hint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] != self.path):
            await self.app(scope, receive, send)
            return
        raw = [v for k, v in scope["headers"] if k == b"content-length"]
        try:
            declared = parse_content_length(raw[0].decode("latin-1") if raw else None)
            if len(raw) > 1 and len({v.strip() for v in raw}) > 1:
                raise ValueError("conflicting Content-Length headers")
        except ValueError:
            await problem(400, "bad_content_length",
                          "the Content-Length header is not a number of bytes")(
                scope, receive, send)
            return
        if declared is not None and declared > self.limit:
            await too_large(self.max_upload_bytes, self.hint)(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            log.warning("upload refused after %s bytes: over the limit of %s",
                        seen, self.limit)
            if started:  # cannot happen for the upload route: it reads first
                raise
            await too_large(self.max_upload_bytes, self.hint)(scope, receive, send)
