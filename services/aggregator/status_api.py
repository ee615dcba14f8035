"""The status API: progress and results of a request, read from MongoDB."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from services.aggregator.settings import Settings
from shared import problems
from shared.auth import Authenticator, CurrentTenant, RateLimit
from shared.errors import PermanentError
from shared.links import OutputLinks, output_csv_link
from shared.logs import setup_logging
from shared.mongo import Store, make_client, mongo_health
from shared.outputcsv import iter_output_csv
from shared.problems import PROBLEM
from shared.products import check_complete, iter_products
from shared.redact import mask_url
from shared.requests import VISIBLE, is_finished

log = logging.getLogger(__name__)


def server_error(exc: PermanentError) -> HTTPException:
    """A 500 that says what is wrong (e.g. ``product_rows_missing``), logged."""
    log.error("%s", exc)
    return HTTPException(500, detail={"code": exc.code, "message": exc.message})


class Failure(BaseModel):
    serial: int
    position: int
    url: str
    error_code: str | None
    error_message: str | None


class Webhook(BaseModel):
    url: str | None
    status: str
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class DeadLetter(BaseModel):
    event_id: str
    event_type: str
    error: str
    at: datetime


class RequestStatus(BaseModel):
    request_id: str
    status: str
    product_count: int
    image_count: int
    succeeded: int
    failed: int
    processed: int
    # Images handed to the processors so far (the relay publishes a request's
    # images a window at a time, fairly across requests).
    published: int
    progress: float
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None
    output_csv_url: str | None = None
    # Why the output CSV could not be built (the notifier dead-lettered the
    # completion; replay it once the cause is fixed).
    output_csv_error: str | None = None
    # Why the relay stopped publishing this request's images (its stored rows
    # are damaged): it cannot finish until an operator repairs them.
    relay_error: str | None = None
    failures: list[Failure]
    failure_count: int
    webhook: Webhook
    # Events of this request the aggregator could not record (on the dead-letter
    # topic): the request may not finish until they are replayed.
    dead_letter_count: int = 0
    dead_letters: list[DeadLetter] = []


class ProductOut(BaseModel):
    serial: int
    name: str
    input_urls: list[str]
    output_urls: list[str | None]


async def load(request: Request, tenant: CurrentTenant, request_id: str) -> dict[str, Any]:
    """The tenant's request: another tenant's is not found, like an unknown id."""
    request.app.state.reads.take(tenant.key_id)
    doc = await request.app.state.store.requests.find_one(
        {"_id": request_id, "tenant": tenant.id, **VISIBLE})
    if doc is None:
        raise HTTPException(404, detail={
            "code": "request_not_found",
            "message": f"no request with id {request_id!r}: check the id returned "
                       "by the upload"})
    return dict(doc)


Found = Annotated[dict[str, Any], Depends(load)]


def create_app(settings: Settings | None = None) -> FastAPI:
    s = settings or Settings()
    setup_logging("status-api", s.log_level)
    links = OutputLinks(s)  # output links handed out: presigned (shared/links.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_client(s)
        app.state.store = Store.from_client(client, s)
        app.state.auth = Authenticator(app.state.store, cache_seconds=s.api_key_cache_seconds)
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(title="imgpipe status API", version="1.0", lifespan=lifespan,
                  description="Progress, results and output CSV of an upload request.")
    # The upload page (another origin) polls it; no other site's scripts may read it.
    app.add_middleware(CORSMiddleware, allow_origins=s.allowed_origins(),
                       allow_methods=["GET"], allow_headers=["Authorization"])
    problems.install(app)  # every error as application/problem+json (shared/problems.py)
    app.state.reads = RateLimit(s.rate_status_per_second, s.rate_status_burst, "status reads")

    @app.get("/health", tags=["ops"])
    async def health(request: Request) -> JSONResponse:
        if not await mongo_health(request.app.state.store):
            return JSONResponse({"ok": False, "mongo": "unavailable"}, status_code=503)
        return JSONResponse({"ok": True, "service": "status-api"})

    errors: dict[int | str, dict[str, Any]] = {
        401: PROBLEM, 404: PROBLEM, 429: PROBLEM, 500: PROBLEM, 503: PROBLEM}

    @app.get("/api/v1/requests/{request_id}", response_model=RequestStatus, tags=["requests"],
             responses=errors)
    async def get_status(request: Request,
                         doc: Found) -> RequestStatus:
        """Status, counts, progress, failures and (once stored) the output CSV link."""
        store: Store = request.app.state.store
        failures = [Failure(serial=f["serial"], position=f["position"], url=f["input_url"],
                            error_code=f.get("error_code"),
                            error_message=f.get("error_message"))
                    async for f in store.images.find(
                        {"request_id": doc["_id"], "status": "failed"}
                    ).sort([("serial", 1), ("position", 1)]).limit(s.failures_listed)
                    ] if doc["failed"] else []  # the common case reads nothing more
        processed = doc["succeeded"] + doc["failed"]
        total: int = doc["image_count"]
        hook = doc.get("webhook") or {}
        relay: dict[str, Any] = doc.get("relay") or {}
        return RequestStatus(
            request_id=doc["_id"], status=doc["status"], product_count=doc["product_count"],
            image_count=total, succeeded=doc["succeeded"], failed=doc["failed"],
            processed=processed, progress=round(processed / total, 4) if total else 1.0,
            published=int(relay.get("published", total)),
            created_at=doc["created_at"], started_at=doc.get("started_at"),
            completed_at=doc.get("completed_at"), updated_at=doc.get("updated_at"),
            output_csv_url=output_csv_link(s, doc["_id"], doc.get("output_csv_url")),
            output_csv_error=doc.get("output_csv_error"), relay_error=doc.get("relay_error"),
            failures=failures,
            failure_count=doc["failed"],
            webhook=Webhook(url=mask_url(doc.get("webhook_url")), status=hook.get("status", "none"),
                            attempts=hook.get("attempts", 0),
                            last_error=hook.get("last_error"),
                            delivered_at=hook.get("delivered_at")),
            dead_letter_count=doc.get("dead_letter_count", 0),
            dead_letters=[DeadLetter(**d) for d in doc.get("dead_letters") or []])

    @app.get("/api/v1/requests/{request_id}/products", response_model=list[ProductOut],
             tags=["requests"], responses={**errors, 422: PROBLEM})
    async def get_products(request: Request, doc: Found,
                           offset: int = Query(0, ge=0),
                           limit: int = Query(100, ge=1, le=1000)) -> list[ProductOut]:
        """Product rows in input order, with output links (presigned) as far as processed."""
        products = iter_products(request.app.state.store, doc, start=offset, limit=limit)
        try:
            return [ProductOut(serial=p.serial, name=p.name, input_urls=p.input_urls,
                               output_urls=links.links(p.output_urls)) async for p in products]
        except PermanentError as exc:
            raise server_error(exc) from exc

    @app.get("/api/v1/requests/{request_id}/output.csv", tags=["requests"],
             response_class=StreamingResponse,
             responses={200: {"content": {"text/csv": {}}}, **errors, 409: PROBLEM})
    async def get_output_csv(request: Request, doc: Found) -> StreamingResponse:
        """The output CSV, built live (fresh output links) once the request is finished."""
        request_id = doc["_id"]
        if not is_finished(doc):
            raise HTTPException(409, detail={
                "code": "not_finished",
                "message": f"the request is {doc['status']}: try again when it is finished"})
        try:
            await check_complete(request.app.state.store, doc)
        except PermanentError as exc:
            raise server_error(exc) from exc
        return StreamingResponse(
            iter_output_csv(request.app.state.store, doc, links.link), media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{request_id}.csv"'})

    return app


def run() -> None:
    import uvicorn

    s = Settings()
    uvicorn.run(create_app(s), host=s.status_host, port=s.status_port,
                log_level=s.log_level.lower(), timeout_graceful_shutdown=10)


if __name__ == "__main__":
    run()
