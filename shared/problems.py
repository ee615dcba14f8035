"""Error responses: RFC 9457 problem details, from the error tree.

Every error body is ``application/problem+json``::

    {"type": "urn:imgpipe:problem:<code>", "title": "...", "status": 422,
     "detail": "...", "code": "<code>",
     "errors": [{"line": 3, "column": "Input Image Urls", "code": "...",
                 "message": "...", "value": "..."}],
     "error_count": 1}

``errors`` lists every problem found (all the CSV's cells at once); a problem
that is not about a place in the file has one entry with ``line`` null. What
the caller should do decides the status (``shared.errors``):

    Unauthorized                401   send a valid API key (``WWW-Authenticate: Bearer``)
    RateLimited                 429   over a per-key limit: retry after ``Retry-After``
    invalid input / policy      422   fix the request, do not retry as is
    TransientError              503   retry after ``Retry-After`` seconds
    MongoDB or Kafka away       503   (the same)
    any other error             500   a bug: ``internal_error``, details logged only
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from shared.errors import (
    ImgpipeError,
    InvalidInputError,
    PolicyViolation,
    RateLimited,
    TransientError,
    Unauthorized,
)
from shared.retry import is_transient

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
          409: "Conflict", 413: "Content too large", 415: "Unsupported media type",
          422: "Unprocessable content", 429: "Too many requests",
          500: "Internal server error", 503: "Service unavailable"}


class Issue(BaseModel):
    line: int | None
    column: str | None
    code: str
    message: str
    value: str | None = None


class ProblemOut(BaseModel):
    """RFC 9457 problem details (``application/problem+json``), built by :func:`problem`."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[Issue]
    error_count: int


PROBLEM: dict[str, Any] = {"model": ProblemOut,
                           "content": {"application/problem+json": {}}}


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def issue(code: str, message: str, column: str | None = None,
          line: int | None = None, value: str | None = None) -> dict[str, Any]:
    return {"line": line, "column": column, "code": code, "message": message, "value": value}


def problem(status: int, code: str, message: str, column: str | None = None, *,
            errors: Sequence[dict[str, Any]] | None = None, error_count: int | None = None,
            retry_after: float | None = None) -> ProblemResponse:
    """A problem response; ``errors`` defaults to the one problem itself."""
    listed = list(errors) if errors is not None else [issue(code, message, column)]
    body = {"type": f"urn:imgpipe:problem:{code}", "title": TITLES.get(status, "Error"),
            "status": status, "detail": message, "code": code, "errors": listed,
            "error_count": len(listed) if error_count is None else error_count}
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return ProblemResponse(body, status_code=status, headers=headers)


def for_error(exc: BaseException, *, retry_after: float) -> ProblemResponse:
    """The response for an exception, by what the caller should do."""
    if isinstance(exc, Unauthorized):
        resp = problem(401, exc.code, exc.message)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="imgpipe"'
        return resp
    if isinstance(exc, RateLimited):
        return problem(429, exc.code, exc.message, retry_after=exc.retry_after or 1)
    if isinstance(exc, InvalidInputError | PolicyViolation):
        return problem(422, exc.code, exc.message)
    if isinstance(exc, TransientError):
        return problem(503, exc.code, f"{exc.message} (retry later)",
                       retry_after=exc.retry_after or retry_after)
    if is_transient(exc):  # MongoDB, Kafka or the network away
        log.warning("answering 503: a backing service is unavailable: %r", exc)
        what = "the database" if isinstance(exc, PyMongoError) else "a backing service"
        return problem(503, "service_unavailable",
                       f"{what} is unavailable right now; retry later", retry_after=retry_after)
    if isinstance(exc, ImgpipeError):
        log.error("answering 500: %s", exc)
        return problem(500, exc.code, exc.message)
    log.error("answering 500 for an unexpected error", exc_info=exc)
    return problem(500, "internal_error", "an unexpected error: it is logged on our side")


def install(app: FastAPI, *, retry_after: float = 5.0) -> None:
    """Answer every error of ``app`` as a problem, FastAPI's and Starlette's own too."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return for_error(exc, retry_after=retry_after)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
        code = detail.get("code") or TITLES.get(exc.status_code, "error").lower().replace(" ", "_")
        message = detail.get("message") or str(exc.detail)
        return problem(exc.status_code, code, message)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        found = [issue("request_invalid", str(e.get("msg")),
                       column=".".join(str(p) for p in e.get("loc", ()))) for e in exc.errors()]
        return problem(422, "request_invalid", "the request is not valid: see errors",
                       errors=found)

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    # Known kinds are answered quietly; anything else also reaches the server's log.
    for kind in (ImgpipeError, PyMongoError, KafkaError, OSError, TimeoutError, Exception):
        app.add_exception_handler(kind, on_error)
