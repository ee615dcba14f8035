"""Ingest API wiring: the FastAPI app, its lifespan (clients) and routes."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from services.ingest.callbacks import CallbackIn, CallbacksDisabled, accept_callback
from services.ingest.handlers import (
    Accepted,
    CsvRejected,
    Deps,
    IdempotencyInProgress,
    WebhookRejected,
    accept_upload,
)
from services.ingest.limits import BodyLimit, too_large
from services.ingest.reconciler import Reconciler
from services.ingest.relay import Relay
from services.ingest.settings import Settings
from shared import problems
from shared.auth import Authenticator, CurrentTenant, RateLimit
from shared.errors import InvalidInputError, RateLimited
from shared.kafka import EventPublisher, ensure_topics
from shared.logs import setup_logging
from shared.mongo import Store, make_client, mongo_health
from shared.problems import PROBLEM, Issue, problem
from shared.requests import ACTIVE_OR_RECEIVING
from shared.signing import SignatureInvalid

log = logging.getLogger(__name__)
UPLOAD_PATH = "/api/v1/requests"
CALLBACK_PATH = "/api/v1/callbacks/image-processed"
CALLBACK_MAX_BYTES = 64 * 1024  # one image result; refused unread beyond this
CSV_TYPES = {"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel",
             "text/tab-separated-values", "text/x-csv", "application/octet-stream", ""}


class AcceptedOut(BaseModel):
    request_id: str
    status_url: str
    product_count: int
    image_count: int
    warnings: list[Issue] = []
    warning_count: int = 0


def create_app(settings: Settings | None = None) -> FastAPI:
    s = settings or Settings()
    setup_logging("ingest", s.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_client(s)
        store = Store.from_client(client, s)
        await store.ensure_indexes()
        await ensure_topics(s)
        publisher = EventPublisher(s, client_id="imgpipe-ingest")
        await publisher.start()
        app.state.auth = Authenticator(store, cache_seconds=s.api_key_cache_seconds)
        relay = Relay(s, store, publisher, reconciler=Reconciler(s, store, publisher))
        app.state.deps = Deps(s, store, publisher, wake_relay=relay.wake)
        app.state.relay = relay
        task = asyncio.create_task(relay.run())
        try:
            yield
        finally:
            relay.stop()
            await task
            await publisher.stop()
            await client.close()

    app = FastAPI(title="imgpipe ingest API", version="1.0",
                  description="Upload a product-image CSV; get a request id back at once.",
                  lifespan=lifespan)
    problems.install(app, retry_after=s.retry_after_seconds)
    slots = asyncio.Semaphore(s.max_concurrent_uploads)  # uploads parsed and stored at once
    uploads = RateLimit(s.rate_uploads_per_minute / 60, s.rate_uploads_burst, "uploads")

    # Counts the raw upload bytes: a chunked body cannot fill the disk first.
    app.add_middleware(BodyLimit, path=UPLOAD_PATH, max_upload_bytes=s.max_upload_bytes)
    app.add_middleware(BodyLimit, path=CALLBACK_PATH, max_upload_bytes=CALLBACK_MAX_BYTES,
                       overhead=0, hint="a callback reports one image")
    page = (Path(__file__).parent / "page.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def upload_page(request: Request) -> HTMLResponse:
        # The demo key (make run) is filled in for a browser on this machine only.
        local = request.client is not None and is_loopback(request.client.host)
        demo = s.demo_api_key if local else ""
        return HTMLResponse(page.replace('"%DEMO_KEY%"', json.dumps(demo)))

    @app.get("/health", tags=["ops"])
    async def health(request: Request) -> JSONResponse:
        deps: Deps = request.app.state.deps
        if not await mongo_health(deps.store):
            return JSONResponse({"ok": False, "mongo": "unavailable"}, status_code=503)
        relay: Relay | None = getattr(request.app.state, "relay", None)
        return JSONResponse({"ok": True, "service": "ingest",
                             "relay": relay.describe() if relay else None})

    @app.post(UPLOAD_PATH, status_code=202, response_model=AcceptedOut, tags=["requests"],
              responses={400: PROBLEM, 401: PROBLEM, 409: PROBLEM, 413: PROBLEM,
                         415: PROBLEM, 422: PROBLEM, 429: PROBLEM, 500: PROBLEM,
                         503: PROBLEM},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["file"],
                      "properties": {
                          "file": {"type": "string", "format": "binary",
                                   "description": "The CSV (S. No., Product Name, "
                                                  "Input Image Urls)"},
                          "webhook_url": {"type": "string", "format": "uri",
                                          "description": "Called once when every image "
                                                         "is done"}}}}}}})
    async def create_request(
        request: Request,
        tenant: CurrentTenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Validate the CSV (all errors at once) and queue every image for processing.

        Limits per API key: uploads per minute and requests in progress (429
        with Retry-After)."""
        deps: Deps = request.app.state.deps
        uploads.take(tenant.key_id)
        if s.max_active_requests > 0:
            await check_active(s, deps.store, tenant.id)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return problem(415, "unsupported_media_type",
                           "send the CSV as multipart/form-data in a field named 'file'")
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return problem(422, "file_missing",
                               "attach the CSV in a multipart field named 'file'", "file")
            ctype = (upload.content_type or "").split(";")[0].strip().lower()
            if ctype not in CSV_TYPES:
                return problem(415, "unsupported_media_type",
                               f"the file is {ctype!r}, not CSV: export the sheet as CSV "
                               "(UTF-8) and upload that", "file")
            if (upload.size or 0) > s.max_upload_bytes:  # the body limit allows for overhead
                return too_large(s.max_upload_bytes)
            webhook = form.get("webhook_url")
            try:
                await asyncio.wait_for(slots.acquire(), timeout=s.upload_wait_seconds)
            except TimeoutError:
                log.warning("upload refused: %s uploads already being received",
                            s.max_concurrent_uploads)
                return problem(503, "overloaded", "too many uploads are being received right "
                               "now; retry after the time in Retry-After",
                               retry_after=s.retry_after_seconds)
            try:
                accepted = await accept_upload(
                    deps, upload.file, tenant=tenant.id, filename=upload.filename,
                    webhook_url=str(webhook).strip() if webhook else None,
                    idempotency_key=idempotency_key)
            except CsvRejected as exc:
                report = exc.report
                return problem(422, exc.code, f"{report.error_count} problem(s) in the CSV: "
                               "fix them all, then upload again",
                               errors=[e.as_dict() for e in report.errors],
                               error_count=report.error_count)
            except WebhookRejected as exc:
                return problem(422, exc.code, exc.message, "webhook_url")
            except IdempotencyInProgress as exc:
                return problem(409, exc.code, exc.message, retry_after=exc.retry_after)
            finally:
                slots.release()
        return accepted_body(s, accepted)

    @app.post(CALLBACK_PATH, status_code=202, tags=["callbacks"],
              responses={401: PROBLEM, 404: PROBLEM, 422: PROBLEM, 503: PROBLEM},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": CallbackIn.model_json_schema()}}}})
    async def image_processed(
        request: Request,
        x_imgpipe_signature: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Accept a signed result from an external image-processing service.

        Sign ``"<unix time>." + body`` with HMAC-SHA256 and the shared secret
        (IMGPIPE_CALLBACK_SECRET); send ``X-Imgpipe-Signature: t=<time>,v1=<hex>``."""
        deps: Deps = request.app.state.deps
        try:
            event = await accept_callback(deps, request.body, x_imgpipe_signature)
        except CallbacksDisabled as exc:
            return problem(404, exc.code, exc.message)
        except SignatureInvalid as exc:
            return problem(401, exc.code, exc.message)
        except InvalidInputError as exc:
            return problem(422, exc.code, exc.message)
        return JSONResponse({"accepted": True, "event_id": event.event_id}, status_code=202)

    return app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_active(s: Settings, store: Store, tenant: str) -> None:
    """At most ``max_active_requests`` of a tenant's requests in progress at
    once (counted in MongoDB: the same answer from every ingest replica)."""
    limit = s.max_active_requests
    active = await store.requests.count_documents(
        {"tenant": tenant, "status": {"$in": ACTIVE_OR_RECEIVING}}, limit=limit)
    if active >= limit:
        raise RateLimited(f"{active} of your requests are still in progress (the most "
                          f"allowed at once is {limit}): upload again when one has finished",
                          retry_after=s.active_retry_after_seconds)


def accepted_body(s: Settings, a: Accepted) -> JSONResponse:
    body = AcceptedOut(
        request_id=a.request_id,
        status_url=s.status_url(a.request_id),
        product_count=a.product_count, image_count=a.image_count,
        warnings=[Issue(**w.as_dict()) for w in a.warnings], warning_count=a.warning_count)
    return JSONResponse(body.model_dump(), status_code=202)
