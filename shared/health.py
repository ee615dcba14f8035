"""A tiny HTTP health endpoint for the services that have no web API of their own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


async def start_health_server(host: str, port: int, check: HealthCheck) -> web.AppRunner:
    """Serve ``GET /health``: 200 when ``check()["ok"]`` is true, else 503."""

    async def health(_: web.Request) -> web.Response:
        body = await check()
        return web.json_response(body, status=200 if body.get("ok") else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
