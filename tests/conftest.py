"""Fixtures for tests that need real servers.

``stack`` starts a throwaway local stack (S3, Kafka and MongoDB APIs) on free
ports for the whole session; ``pipeline`` starts every service against it with
a random topic prefix. Unit tests use neither and need no servers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy import services
from deploy.brokers import BROKERS, start_kafka, start_tansu
from deploy.kafka import find_java
from deploy.localstack import LocalStack, StackState
from deploy.procs import free_port, stop_pid
from shared import webhook_signing
from shared.mongo import Store, make_client
from shared.settings import CommonSettings
from shared.signing import SignatureInvalid

log = logging.getLogger("tests")
# The pipeline's tenant signs its webhooks with it; the tests' receiver
# (HttpServer) verifies every webhook with it, as a merchant's would.
WEBHOOK_SECRET = webhook_signing.new_secret()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    """The session's stack, on the broker IMGPIPE_BROKER chooses (Apache Kafka
    wherever Java 17+ is found)."""
    with own_stack(tmp_path_factory.mktemp("stack")) as (_, state):
        yield state


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest, stack: StackState,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Each broker in turn, for the broker contract suite: the stack's own, and
    the other one started for the session (Apache Kafka only where Java 17+ is)."""
    kind = str(request.param)
    if kind == stack.broker:
        yield Broker(kind, f"127.0.0.1:{stack.kafka_port}")
        return
    home, port = tmp_path_factory.mktemp(f"broker-{kind}"), free_port()
    if kind == "tansu":
        pid = start_tansu(port=port, storage="memory://tansu/", log_path=home / "tansu.log")
    else:
        if find_java() is None:
            pytest.skip("Apache Kafka needs a Java 17+ runtime")
        pid = start_kafka(home, port=port, controller_port=free_port(), partitions=4,
                          log_path=home / "kafka.log")
    try:
        yield Broker(kind, f"127.0.0.1:{port}")
    finally:
        stop_pid(pid)


@dataclass(frozen=True)
class Broker:
    kind: str  # "kafka" or "tansu"
    bootstrap: str

    @property
    def idempotence(self) -> bool:
        return self.kind == "kafka"


@pytest.fixture(scope="session")
def stack_env(stack: StackState) -> dict[str, str]:
    """IMGPIPE_* settings for the stack, with a topic prefix and DB of its own."""
    return env_for(stack)


@pytest.fixture
async def store(stack_env: dict[str, str]) -> AsyncIterator[Store]:
    """A Store on a fresh, randomly named database of the local stack (dropped after)."""
    settings = CommonSettings(mongo_uri=stack_env["IMGPIPE_MONGO_URI"],
                              mongo_db=f"t{uuid.uuid4().hex[:10]}")
    client = make_client(settings)
    st = Store.from_client(client, settings)
    await st.ensure_indexes()
    yield st
    await client.drop_database(settings.mongo_db)
    await client.close()


def new_key(env: dict[str, str], tenant: str | None = None, *,
            webhook_secret: str = WEBHOOK_SECRET) -> dict[str, Any]:
    """A key made by the operator CLI (``python -m deploy.keys``) on the
    database of ``env``: a new tenant (signing its webhooks with
    ``webhook_secret``) unless ``tenant`` exists. The CLI's JSON answer."""
    tenant = tenant or f"t-{uuid.uuid4().hex[:10]}"
    args = ["--json", "create", "--tenant", tenant]
    if webhook_secret:
        args += ["--webhook-secret", webhook_secret]
    done = keys_cli(env, *args)
    assert done.returncode == 0, done.stderr
    made: dict[str, Any] = json.loads(done.stdout)
    return made


def keys_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's key CLI on the database of ``env``; its result (not checked)."""
    return subprocess.run([sys.executable, "-m", "deploy.keys", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, check=False, cwd=services.ROOT)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Pipeline:
    env: dict[str, str]
    ports: services.ServicePorts
    running: services.Services
    key: str = ""  # tenant ``tenant``'s API key: every test's client sends it
    tenant: str = ""

    def new_key(self, tenant: str | None = None, *,
                webhook_secret: str = WEBHOOK_SECRET) -> dict[str, Any]:
        return new_key(self.env, tenant, webhook_secret=webhook_secret)

    @functools.cached_property
    def http(self) -> httpx.Client:
        """A client of the pipeline's tenant, for one-off calls (closed with the pipeline)."""
        return self.client(timeout=60)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client that authenticates with ``key`` (the pipeline's own by default)."""
        return httpx.Client(headers=bearer(key or self.key), **kwargs)

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.ingest}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.status}"


PIPELINE_ENV = {"IMGPIPE_WEBHOOK_BACKOFF_BASE": "0.2",
                "IMGPIPE_MAX_UPLOAD_BYTES": str(5 * 1024 * 1024),
                "IMGPIPE_FETCH_MAX_ATTEMPTS": "2", "IMGPIPE_PROCESSOR_WORKERS": "2",
                # Tests poll and retry faster than a client should: the limits
                # themselves are tested in tests/integration/test_auth.py.
                "IMGPIPE_RATE_UPLOADS_PER_MINUTE": "600", "IMGPIPE_RATE_UPLOADS_BURST": "100",
                "IMGPIPE_RATE_STATUS_PER_SECOND": "200", "IMGPIPE_RATE_STATUS_BURST": "400"}


@contextlib.contextmanager
def running_pipeline(stack_env: dict[str, str], logs: Path, *, processors: int = 2
                     ) -> Iterator[Pipeline]:
    """Every service on a stack, on free ports; stopped (log tails shown on CI) after."""
    ports = services.ServicePorts.free()
    env = {**stack_env, **PIPELINE_ENV, "IMGPIPE_CALLBACK_SECRET": secrets.token_hex(16)}
    running = services.start(services.plan(env, ports, processors=processors), log_dir=logs,
                             timeout=240, wait_for_assignment=True)
    made: Pipeline | None = None
    try:
        made = Pipeline(env, ports, running)
        key = made.new_key()  # its webhooks are signed with WEBHOOK_SECRET
        made.key, made.tenant = key["key"], key["tenant"]
        yield made
    finally:
        if made is not None and "http" in made.__dict__:
            made.http.close()
        running.stop()
        if os.environ.get("CI"):
            for svc in running.items:
                if svc.log_path and svc.log_path.exists():
                    tail = svc.log_path.read_text(errors="replace").splitlines()[-40:]
                    log.warning("--- %s log tail ---\n%s", svc.name, "\n".join(tail))


@pytest.fixture(scope="session")
def pipeline(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pipeline]:
    with running_pipeline(stack_env, tmp_path_factory.mktemp("service-logs")) as running:
        yield running


@contextlib.contextmanager
def own_stack(data: Path, broker: str | None = None) -> Iterator[tuple[LocalStack, StackState]]:
    """A local stack of a test's own (for tests that restart or break servers)."""
    if broker == "kafka" and find_java() is None:
        pytest.skip("Apache Kafka needs a Java 17+ runtime")
    local = LocalStack(data, s3_port=free_port(), kafka_port=free_port(),
                       mongo_port=free_port(), kafka_storage="s3", broker=broker)
    state = local.up()
    try:
        yield local, state
    finally:
        local.down()


def env_for(state: StackState) -> dict[str, str]:
    """IMGPIPE_* settings for a stack, with a topic prefix and DB of its own."""
    tag = uuid.uuid4().hex[:8]
    return {**state.env(), "IMGPIPE_TOPIC_PREFIX": f"t{tag}", "IMGPIPE_MONGO_DB": f"db{tag}",
            "IMGPIPE_TOPIC_PARTITIONS": "4", "IMGPIPE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}




@dataclass
class HttpServer:
    """A real local HTTP server: serves ``files`` and records every request.

    It is also a webhook receiver that verifies every POST's Standard Webhooks
    signature with ``WEBHOOK_SECRET`` and answers 401 to a bad one, as a
    merchant's receiver would; each POST is recorded with ``signature_error``
    (None when it verified) and the fixture fails a test that got a bad one."""

    port: int
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)  # path -> seconds before answering
    # path -> status codes answered to successive POSTs (popped; 204 once empty)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    # path -> Retry-After header sent with every POST answer that is not 2xx
    retry_after: dict[str, str] = field(default_factory=dict)
    # Served for any GET path under a prefix that ``files`` lacks: prefix -> file.
    prefixes: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    expect_unsigned: bool = False  # a test of unsigned webhooks sets it

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"


def _serve(server_state: HttpServer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            server_state.hits[path] = server_state.hits.get(path, 0) + 1
            if path in server_state.delays:
                time.sleep(server_state.delays[path])
            item = server_state.files.get(path) or next(
                (f for p, f in server_state.prefixes.items() if path.startswith(p)), None)
            if item is None:
                self.send_error(404)
                return
            body, ctype = item
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            path = self.path.lstrip("/").split("?", 1)[0]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                webhook_signing.verify([WEBHOOK_SECRET], dict(self.headers), body)
                error = None
            except SignatureInvalid as exc:
                error = exc.message
            server_state.received.append({
                "path": self.path, "headers": dict(self.headers),
                "json": json.loads(body) if body else None, "body": body,
                "signature_error": error})
            if error is not None and not server_state.expect_unsigned:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in server_state.delays:
                time.sleep(server_state.delays[path])
            script = server_state.statuses.get(path)
            status = script.pop(0) if script else 204
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", server_state.url(path))
            if path in server_state.retry_after and not 200 <= status < 300:
                self.send_header("Retry-After", server_state.retry_after[path])
            if status not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", server_state.port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    state = HttpServer(port=free_port())
    httpd = _serve(state)
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
    bad = [r for r in state.received if r["signature_error"] and not state.expect_unsigned]
    assert not bad, f"webhooks whose signature did not verify: {bad}"


SHARED_PHOTO = Path(__file__).resolve().parents[2] / "shared" / "photos" / "grace_hopper.jpg"
