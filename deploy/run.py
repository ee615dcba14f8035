"""``make run``: the local stack plus every service, until Ctrl-C.

Ports come from IMGPIPE_STACK_*_PORT (servers) and the services' defaults
(ingest 8000, status 8001, processors 8002/8012, notifier 8003, aggregator 8004).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from deploy import services
from deploy.brokers import display_name
from deploy.localstack import stack_from_env
from deploy.procs import StackError
from shared import tenants, webhook_signing
from shared.mongo import Store, make_client
from shared.settings import CommonSettings

log = logging.getLogger("run")


def webhook_secret(data: Path) -> str:
    """IMGPIPE_WEBHOOK_SECRET, else the local stack's own, made once and kept
    in ``<data>/webhook_secret`` so receivers keep verifying across restarts."""
    if given := os.environ.get("IMGPIPE_WEBHOOK_SECRET"):
        return given
    path = data / "webhook_secret"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        path.write_text(webhook_signing.new_secret() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def demo_key(env: dict[str, str], data: Path, secret: str) -> str:
    """The demo tenant's API key, kept in ``<data>/demo_api_key`` (0600); made
    (with the tenant, its webhooks signed with ``secret``) when missing or
    no longer valid."""
    settings = CommonSettings(mongo_uri=env["IMGPIPE_MONGO_URI"],
                              mongo_db=env.get("IMGPIPE_MONGO_DB", "imgpipe"))
    path = data / "demo_api_key"

    async def ensure() -> str:
        client = make_client(settings)
        try:
            store = Store.from_client(client, settings)
            await store.ensure_indexes()
            kept = path.read_text().strip() if path.exists() else ""
            if kept and await tenants.lookup(store, kept):
                return kept
            made = await tenants.create_key(store, "demo", label="make run",
                                            webhook_secret=secret)
            return made.token
        finally:
            await client.close()

    key = asyncio.run(ensure())
    data.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = Path(os.environ.get("IMGPIPE_DATA_DIR", ".data"))
    stack = stack_from_env(data / "stack")
    stop = threading.Event()
    # Explicit handlers: a background launcher may start us with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running = None
    try:
        log.info("starting the local stack (S3, Kafka, MongoDB APIs) in %s ...", data / "stack")
        state = stack.up()
        secret = webhook_secret(data)
        env = {**state.env(), "IMGPIPE_FETCH_ALLOW_NETWORKS": os.environ.get(
            "IMGPIPE_FETCH_ALLOW_NETWORKS", "127.0.0.0/8"),
               "IMGPIPE_WEBHOOK_SECRET": secret}  # for requests from before tenants
        key = demo_key(env, data, secret)
        env["IMGPIPE_DEMO_API_KEY"] = key  # the upload page fills it in on loopback
        ports = services.ServicePorts()
        log.info("starting the services (logs in %s) ...", data / "logs")
        running = services.start(services.plan(env, ports, processors=int(
            os.environ.get("IMGPIPE_PROCESSORS", "2"))), log_dir=data / "logs")
        sys.stdout.write(
            "\nimgpipe is running. Press Ctrl-C to stop everything.\n"
            f"  Upload page + API:  http://127.0.0.1:{ports.ingest}/  (docs: /docs)\n"
            f"  Status API:         http://127.0.0.1:{ports.status}/docs\n"
            f"  Kafka API:          {env['IMGPIPE_KAFKA_BOOTSTRAP']}  "
            f"({display_name(state.broker)})\n"
            f"  MongoDB API:        {env['IMGPIPE_MONGO_URI']}\n"
            f"  S3 API:             http://{env['IMGPIPE_S3_ENDPOINT']}  "
            f"(keys in {data / 'stack' / 'credentials.json'})\n"
            f"  API key (tenant demo): {key}\n"
            f"    (kept in {data / 'demo_api_key'}; send it as 'Authorization: Bearer <key>';\n"
            "    more keys: python -m deploy.keys create --tenant NAME)\n"
            f"  Webhooks signed with the secret in {data / 'webhook_secret'} "
            "(Standard Webhooks; docs/api.md#webhook)\n\n")
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    except StackError as exc:
        log.error("error: %s", exc)
        return 1
    finally:
        log.info("stopping ...")
        if running:
            running.stop()
        stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
