"""Health endpoints say what is down, never how (no exception text)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo.errors import ServerSelectionTimeoutError

from services.aggregator import status_api
from services.aggregator.settings import Settings as StatusSettings
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import Settings as IngestSettings

LEAK = "mongo-secret-host.internal:27017 (auth user=admin)"


class DownDb:
    async def command(self, name: str) -> Any:
        raise ServerSelectionTimeoutError(LEAK)


async def get_health(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc") as client:
        return await client.get("/health")


@pytest.mark.parametrize("which", ["ingest", "status-api"])
async def test_mongo_down_is_503_without_details(which: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = SimpleNamespace(db=DownDb())
    if which == "ingest":
        app = create_ingest(IngestSettings())
        app.state.deps = SimpleNamespace(store=store)
    else:
        app = status_api.create_app(StatusSettings())
        app.state.store = store
    resp = await get_health(app)
    assert resp.status_code == 503
    assert resp.json() == {"ok": False, "mongo": "unavailable"}
    assert LEAK not in resp.text
    assert LEAK in capsys.readouterr().err  # the operator still sees why, in the log
