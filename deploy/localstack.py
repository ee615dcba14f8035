"""The embedded local stack: real S3, Kafka and MongoDB API servers on loopback.

- SeaweedFS (``weed mini``) for the S3 API, with generated access keys.
- Apache Kafka (a single KRaft node, jars from Maven Central, see
  ``deploy/kafka.py``) for the Kafka API; Tansu where no Java 17+ runtime is
  found (``IMGPIPE_BROKER``, see ``deploy/brokers.py``), storing its topics in
  SeaweedFS (``s3://BUCKET/``) so a broker restart loses nothing (``memory``
  storage for throwaway runs).
- SecantusDB for the MongoDB API, on disk (a dev/test dependency only).

State (pids, ports, keys) lives in ``<data>/stack.json``; a stack that is
already up and healthy is reused. Usage::

    python -m deploy.localstack up|down|status|env [--data .data/stack]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.brokers import broker_ready, choose_broker, display_name, start_kafka, start_tansu
from deploy.procs import (
    StackError,
    free_port,
    pid_alive,
    port_open,
    require_free,
    spawn,
    stop_pid,
    wait_until,
)

log = logging.getLogger("localstack")
KAFKA_BUCKET = "imgpipe-kafka"
OUTPUT_BUCKET = "imgpipe-output"


@dataclass
class StackState:
    s3_port: int
    kafka_port: int
    mongo_port: int
    access_key: str
    secret_key: str
    kafka_storage: str = "s3"  # Tansu's storage: "s3" or "memory"
    pids: dict[str, int] = field(default_factory=dict)
    broker: str = "tansu"  # "kafka" or "tansu" (state files from before Kafka: Tansu)
    kafka_controller_port: int = 0

    def env(self) -> dict[str, str]:
        """The IMGPIPE_* variables that point services at this stack."""
        return {
            "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.kafka_port}",
            # No retryable writes: SecantusDB keeps a record of each (30 min, up
            # to 10k) and scans, then sorts, them on every write, which made it
            # the slowest part of a big request; imgpipe's writes are idempotent.
            "IMGPIPE_MONGO_URI": f"mongodb://127.0.0.1:{self.mongo_port}/?retryWrites=false",
            "IMGPIPE_S3_ENDPOINT": f"127.0.0.1:{self.s3_port}",
            "IMGPIPE_S3_ACCESS_KEY": self.access_key,
            "IMGPIPE_S3_SECRET_KEY": self.secret_key,
            "IMGPIPE_OUTPUT_BUCKET": OUTPUT_BUCKET,
            # Tansu has no idempotent producer (Apache Kafka has).
            "IMGPIPE_KAFKA_IDEMPOTENCE": "true" if self.broker == "kafka" else "false",
        }


class LocalStack:
    def __init__(self, data_dir: Path, *, s3_port: int = 8333, kafka_port: int = 9092,
                 mongo_port: int = 27017, kafka_storage: str = "s3",
                 broker: str | None = None) -> None:
        self.data = data_dir.resolve()
        self.state_file = self.data / "stack.json"
        self.wanted = (s3_port, kafka_port, mongo_port, kafka_storage)
        self.broker = choose_broker(broker)  # IMGPIPE_BROKER when None

    # -- public ---------------------------------------------------------------
    def up(self) -> StackState:
        state = self._load()
        if state and state.broker == self.broker and self._healthy(state):
            log.info("reusing the local stack already running from %s", self.data)
            return state
        if state:
            self.down()
        s3, kafka, mongo, storage = self.wanted
        require_free(s3, "the S3 API (SeaweedFS)", "IMGPIPE_STACK_S3_PORT")
        require_free(kafka, f"the Kafka API ({display_name(self.broker)})",
                     "IMGPIPE_STACK_KAFKA_PORT")
        require_free(mongo, "the MongoDB API (SecantusDB)", "IMGPIPE_STACK_MONGO_PORT")
        key, secret = self._credentials()
        state = StackState(s3, kafka, mongo, key, secret, storage, broker=self.broker,
                           kafka_controller_port=free_port())
        self.data.mkdir(parents=True, exist_ok=True)
        try:
            self._start_s3(state)
            self._save(state)
            self._start_kafka(state)
            self._save(state)
            self._start_mongo(state)
            self._save(state)
        except BaseException:
            self.down()
            raise
        return state

    def down(self) -> None:
        state = self._load()
        if state is None:
            return
        for name in ("kafka", "mongo", "s3"):  # broker first: it writes to S3
            pid = state.pids.get(name)
            if pid and pid_alive(pid):
                log.info("stopping %s (pid %s)", name, pid)
                stop_pid(pid)
        self.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, bool]:
        state = self._load()
        if state is None:
            return {}
        return {name: pid_alive(pid) for name, pid in state.pids.items()}

    # -- servers --------------------------------------------------------------
    def _start_s3(self, st: StackState) -> None:
        config = self.data / "s3-identities.json"
        # One identity, with keys; no "anonymous" one: a request without a
        # signature is refused (403), so the output bucket is private.
        _write_private(config, json.dumps({"identities": [{
            "name": "imgpipe",
            "credentials": [{"accessKey": st.access_key, "secretKey": st.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        p = {n: free_port() for n in ("master", "volume", "filer", "s3g", "mg", "vg", "fg")}
        admin = _port_pair()
        cmd = [
            _bin("weed"), "mini", f"-dir={self.data / 's3'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.port={st.s3_port}", f"-s3.port.grpc={p['s3g']}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['mg']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['vg']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['fg']}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            "-master.telemetry=false", f"-s3.config={config}",
            f"-bucket={KAFKA_BUCKET},{OUTPUT_BUCKET}",
        ]
        (self.data / "s3").mkdir(parents=True, exist_ok=True)
        logf = self.data / "logs" / "seaweedfs.log"
        proc = spawn(cmd, log_path=logf)
        st.pids["s3"] = proc.pid
        wait_until(lambda: _s3_buckets_ready(st), timeout=90, what="SeaweedFS (S3 API)",
                   log_path=logf, pid=proc.pid)

    def _start_kafka(self, st: StackState) -> None:
        logf = self.data / "logs" / f"{st.broker}.log"
        if st.broker == "kafka":
            st.pids["kafka"] = start_kafka(
                self.data / "kafka", port=st.kafka_port, partitions=8,
                controller_port=st.kafka_controller_port, log_path=logf)
            return
        storage = f"s3://{KAFKA_BUCKET}/" if st.kafka_storage == "s3" else "memory://tansu/"
        env = {"AWS_ENDPOINT": f"http://127.0.0.1:{st.s3_port}", "AWS_ALLOW_HTTP": "true",
               "AWS_ACCESS_KEY_ID": st.access_key, "AWS_SECRET_ACCESS_KEY": st.secret_key,
               "AWS_DEFAULT_REGION": "us-east-1"}
        st.pids["kafka"] = start_tansu(port=st.kafka_port, storage=storage, log_path=logf,
                                       env=env)

    def restart_broker(self, *, kill: bool = False) -> StackState:
        """Stop the broker (SIGTERM, or SIGKILL with ``kill``) and start it again
        on the same ports and data: for tests of a broker restart."""
        self.stop_server("kafka", kill=kill)
        return self.start_server("kafka")

    def stop_server(self, name: str, *, kill: bool = False) -> StackState:
        """Stop one server (``kafka``, ``mongo`` or ``s3``; SIGKILL with
        ``kill``), leaving its ports and data for :meth:`start_server`: for
        tests of an outage."""
        st = self._load()
        if st is None:
            raise StackError("no local stack is running")
        pid = st.pids.get(name, 0)
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stop_pid(pid)
        port = {"kafka": st.kafka_port, "mongo": st.mongo_port, "s3": st.s3_port}[name]
        wait_until(lambda: not port_open(port), timeout=30, what=f"{name} to stop")
        return st

    def start_server(self, name: str) -> StackState:
        """Start a server stopped by :meth:`stop_server`, on its ports and data."""
        st = self._load()
        if st is None:
            raise StackError("no local stack is running")
        {"kafka": self._start_kafka, "mongo": self._start_mongo, "s3": self._start_s3}[name](st)
        self._save(st)
        return st

    def _start_mongo(self, st: StackState) -> None:
        cmd = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port",
               str(st.mongo_port), "--storage-path", str(self.data / "mongo"),
               "--log-level", "WARNING"]
        logf = self.data / "logs" / "secantus.log"
        proc = spawn(cmd, log_path=logf)
        st.pids["mongo"] = proc.pid
        wait_until(lambda: _mongo_ping(st.mongo_port), timeout=90,
                   what="SecantusDB (MongoDB API)", log_path=logf, pid=proc.pid)

    # -- state ----------------------------------------------------------------
    def _healthy(self, st: StackState) -> bool:
        alive = all(pid_alive(st.pids.get(n, 0) or 0) for n in ("s3", "kafka", "mongo"))
        return (alive and broker_ready(st.broker, st.kafka_port) and _s3_buckets_ready(st)
                and _mongo_ping(st.mongo_port))

    def _credentials(self) -> tuple[str, str]:
        path = self.data / "credentials.json"
        if path.exists():
            creds = json.loads(path.read_text())
            return creds["access_key"], creds["secret_key"]
        self.data.mkdir(parents=True, exist_ok=True)
        key, secret = "imgpipe" + secrets.token_hex(6), secrets.token_urlsafe(30)
        _write_private(path, json.dumps({"access_key": key, "secret_key": secret}))
        return key, secret

    def _load(self) -> StackState | None:
        if not self.state_file.exists():
            return None
        return StackState(**json.loads(self.state_file.read_text()))

    def _save(self, st: StackState) -> None:
        self.state_file.write_text(json.dumps(asdict(st), indent=2))


def _write_private(path: Path, text: str) -> None:
    """Write a secret file that is never readable by others, not even briefly:
    created with mode 0600 (an existing file is truncated and re-moded)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        f.write(text)


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _port_pair() -> int:
    """A free port whose +10000 neighbour is free too (weed's worker assumes it)."""
    for _ in range(50):
        port = free_port()
        if port + 10000 < 65536 and not port_open(port + 10000):
            return port
    raise StackError("could not find a free port pair for the SeaweedFS admin server")


def _s3_buckets_ready(st: StackState) -> bool:
    from minio import Minio

    if not port_open(st.s3_port):
        return False
    client = Minio(f"127.0.0.1:{st.s3_port}", access_key=st.access_key,
                   secret_key=st.secret_key, secure=False)
    return all(client.bucket_exists(b) for b in (KAFKA_BUCKET, OUTPUT_BUCKET))


def _mongo_ping(port: int) -> bool:
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]]
    with MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=1000) as client:
        client.admin.command("ping")
    return True


def stack_from_env(data: Path) -> LocalStack:
    return LocalStack(
        data,
        s3_port=int(os.environ.get("IMGPIPE_STACK_S3_PORT", "8333")),
        kafka_port=int(os.environ.get("IMGPIPE_STACK_KAFKA_PORT", "9092")),
        mongo_port=int(os.environ.get("IMGPIPE_STACK_MONGO_PORT", "27017")),
        kafka_storage=os.environ.get("IMGPIPE_STACK_KAFKA_STORAGE", "s3"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--data", type=Path, default=Path(".data/stack"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stack = stack_from_env(args.data)
    try:
        if args.command == "up":
            st = stack.up()
            sys.stdout.write("".join(f"{k}={v}\n" for k, v in st.env().items()))
        elif args.command == "down":
            stack.down()
        elif args.command == "status":
            sys.stdout.write(json.dumps(stack.status(), indent=2) + "\n")
        else:
            loaded = stack._load()
            if loaded is None:
                raise StackError("no local stack is running: start it with `make stack-up`")
            sys.stdout.write("".join(f"{k}={v}\n" for k, v in loaded.env().items()))
    except StackError as exc:
        log.error("error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
