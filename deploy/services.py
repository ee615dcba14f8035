"""Starting and stopping every imgpipe service as local processes.

Used by ``make run`` (``deploy/run.py``) and by the end-to-end test fixtures,
so both run the services exactly the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy.procs import (
    free_port,
    pid_alive,
    port_open,
    require_free,
    spawn,
    stop_pid,
    wait_until,
)

log = logging.getLogger("services")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServicePorts:
    ingest: int = 8000
    status: int = 8001
    processor: int = 8002  # processor i listens on processor + 10 * i (fixed plan)
    notifier: int = 8003
    aggregator: int = 8004
    fixed: bool = True  # False: every port is a free one picked at start

    @classmethod
    def free(cls) -> ServicePorts:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port(), fixed=False)

    def processor_port(self, i: int) -> int:
        if i == 0 or self.fixed:
            return self.processor + 10 * i
        return free_port()


@dataclass
class Service:
    name: str
    args: list[str]
    env: dict[str, str]
    health_port: int
    pid: int | None = None
    log_path: Path | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/health"


@dataclass
class Services:
    """The running set; ``stop()`` ends them all (SIGTERM, then SIGKILL)."""

    items: list[Service] = field(default_factory=list)

    def stop(self) -> None:
        for svc in reversed(self.items):
            if svc.pid and pid_alive(svc.pid):
                log.info("stopping %s", svc.name)
                stop_pid(svc.pid, timeout=40)


def plan(base_env: dict[str, str], ports: ServicePorts, *, processors: int = 2) -> list[Service]:
    env = dict(base_env)
    env.setdefault("IMGPIPE_STATUS_BASE_URL", f"http://127.0.0.1:{ports.status}")
    env.setdefault("IMGPIPE_INGEST_BASE_URL", f"http://127.0.0.1:{ports.ingest}")
    out = [
        Service("ingest", _module("services.ingest"),
                {**env, "IMGPIPE_INGEST_PORT": str(ports.ingest)}, ports.ingest),
        Service("status-api", _module("services.aggregator.status_api"),
                {**env, "IMGPIPE_STATUS_PORT": str(ports.status)}, ports.status),
        Service("aggregator", _module("services.aggregator"),
                {**env, "IMGPIPE_AGGREGATOR_HEALTH_PORT": str(ports.aggregator)},
                ports.aggregator),
        Service("notifier", _module("services.notifier"),
                {**env, "IMGPIPE_NOTIFIER_HEALTH_PORT": str(ports.notifier)}, ports.notifier),
    ]
    for i in range(processors):
        port = ports.processor_port(i)
        out.append(Service(f"processor-{i + 1}", _module("services.processor"),
                           {**env, "IMGPIPE_PROCESSOR_HEALTH_PORT": str(port)}, port))
    return out


def _module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def health(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body
    except Exception:
        return None


def start(planned: list[Service], *, log_dir: Path, timeout: float = 120.0,
          wait_for_assignment: bool = False) -> Services:
    """Start every service and wait until each health endpoint answers ok.

    With ``wait_for_assignment``, also wait until the aggregator's consumer
    group has partitions (a Faust worker's first join can take a minute).
    """
    running = Services()
    try:
        for svc in planned:
            svc.log_path = log_dir / f"{svc.name}.log"
            _spawn(svc)
            running.items.append(svc)
        for svc in planned:
            _wait_ready(svc, timeout, wait_for_assignment)
    except BaseException:
        running.stop()
        raise
    return running


def restart(svc: Service, *, kill: bool = True, timeout: float = 120.0) -> None:
    """Stop one running service (SIGKILL with ``kill``: no drain, no clean-up)
    and start it again with the same settings and log: for fault tests."""
    if svc.pid and pid_alive(svc.pid):
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc.pid, signal.SIGKILL)
        stop_pid(svc.pid)
    wait_until(lambda: not port_open(svc.health_port), timeout=30,
               what=f"{svc.name} to stop")
    _spawn(svc)
    _wait_ready(svc, timeout, wait_for_assignment=False)


def _spawn(svc: Service) -> None:
    assert svc.log_path is not None
    require_free(svc.health_port, svc.name, "the service's IMGPIPE_*_PORT")
    env = {**os.environ, **svc.env, "PYTHONUNBUFFERED": "1"}
    svc.pid = spawn(svc.args, log_path=svc.log_path, env=env, cwd=ROOT).pid


def _wait_ready(svc: Service, timeout: float, wait_for_assignment: bool) -> None:
    def ready() -> bool:
        body = health(svc.health_url)
        if not body or not body.get("ok"):
            return False
        return not (wait_for_assignment and svc.name == "aggregator"
                    and not body.get("assigned"))
    wait_until(ready, timeout=timeout, what=f"service {svc.name}", log_path=svc.log_path,
               pid=svc.pid)
