"""Signed callbacks from an external image-processing service.

An external service that processed an image for us reports the result here;
after the signature and the position are checked, the result enters the
pipeline as an ordinary image-done event (``source="callback"``), so counting,
completion and the webhook work exactly as for our own processor.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Self

from pydantic import BaseModel, Field, HttpUrl, ValidationError, model_validator

from services.ingest.handlers import Deps
from shared import signing
from shared.errors import InvalidInputError, PermanentError
from shared.events import ImageDone, image_id_for
from shared.logs import request_id_var
from shared.products import product_at
from shared.requests import VISIBLE

log = logging.getLogger(__name__)


class CallbacksDisabled(PermanentError):
    code = "callbacks_disabled"


class CallbackIn(BaseModel):
    request_id: str
    row: int = Field(ge=0, lt=2**31, description="0-based index of the product among the "
                     "CSV's data rows (the `row` of its image.requested event)")
    position: int = Field(ge=0, lt=2**31,
                          description="0-based index of the URL within the product")
    url: str = Field(description="the input URL at that position, as uploaded")
    status: Literal["succeeded", "failed"]
    output_url: HttpUrl | None = None
    error_code: str | None = Field(None, max_length=100)
    error_message: str | None = Field(None, max_length=1000)
    bytes_in: int | None = None
    bytes_out: int | None = None
    quality_in: int | None = Field(None, ge=1, le=100)
    quality_out: int | None = Field(None, ge=1, le=100)
    output_format: str | None = None

    @model_validator(mode="after")
    def _result_present(self) -> Self:
        if self.status == "succeeded" and self.output_url is None:
            raise ValueError("a succeeded image needs output_url")
        if self.status == "failed" and not self.error_code:
            raise ValueError("a failed image needs error_code")
        return self


async def accept_callback(deps: Deps, read_body: Callable[[], Awaitable[bytes]],
                          signature: str | None) -> ImageDone:
    """``read_body`` is called only once callbacks are known to be enabled: a
    disabled endpoint reads nothing."""
    secret = deps.settings.callback_secret
    if not secret:
        raise CallbacksDisabled("callbacks are disabled: set IMGPIPE_CALLBACK_SECRET")
    body = await read_body()
    signing.verify(secret, body, signature, tolerance=deps.settings.callback_tolerance_seconds)
    try:
        cb = CallbackIn.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInputError(f"{where}: {first['msg']}", code="callback_invalid") from exc
    request_id_var.set(cb.request_id)
    request = await deps.store.requests.find_one({"_id": cb.request_id, **VISIBLE},
                                                 {"product_count": 1, "page_rows": 1})
    product = await product_at(deps.store, request, cb.row) if request else None
    urls = (product or {}).get("input_urls") or []
    if product is None or cb.position >= len(urls) or urls[cb.position] != cb.url:
        raise InvalidInputError(
            f"request {cb.request_id} has no image {cb.url!r} at row {cb.row}, "
            f"position {cb.position}", code="unknown_position")
    event = ImageDone(
        request_id=cb.request_id, image_id=image_id_for(cb.request_id, cb.url),
        serial=product["serial"], row=cb.row, position=cb.position, url=cb.url,
        status=cb.status,
        output_url=str(cb.output_url) if cb.output_url else None, error_code=cb.error_code,
        error_message=cb.error_message, bytes_in=cb.bytes_in, bytes_out=cb.bytes_out,
        quality_in=cb.quality_in, quality_out=cb.quality_out, output_format=cb.output_format,
        source="callback")
    await deps.publisher.publish(event)
    log.info("callback accepted for row %s position %s: %s", cb.row, cb.position, cb.status)
    return event
