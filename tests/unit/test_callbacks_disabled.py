"""With no shared secret, the callback endpoint refuses before reading a byte."""

from __future__ import annotations

import pytest

from services.ingest.callbacks import CallbacksDisabled, accept_callback
from services.ingest.handlers import Deps
from services.ingest.settings import Settings


async def test_disabled_callbacks_never_read_the_body() -> None:
    async def read_body() -> bytes:
        raise AssertionError("the body was read")

    deps = Deps(Settings(callback_secret=""), store=None, publisher=None)  # type: ignore[arg-type]
    with pytest.raises(CallbacksDisabled):
        await accept_callback(deps, read_body, "t=1,v1=00")
