"""Apache Kafka for the local stack: pinned jars from Maven Central, one KRaft node.

The jars of ``org.apache.kafka:kafka_2.13`` and its runtime dependencies are
listed in ``deploy/kafka.lock.json`` (coordinates, sizes, SHA-256 sums). They
are downloaded once, with a progress bar, into a cache outside the work tree
(``IMGPIPE_KAFKA_CACHE``, default ``~/.cache/imgpipe/kafka``) and every
checksum is verified on every start. The node is a combined broker and
controller (KRaft, no ZooKeeper) on loopback; its storage is formatted once
with Kafka's own storage tool. Nothing but a Java 17+ runtime is needed.

    python -m deploy.kafka fetch          # download and verify the jars
    python -m deploy.kafka lock 4.4.0     # rewrite the lock (needs mvn; maintainers only)
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.procs import StackError
from shared.retry import backoff

log = logging.getLogger("kafka")
LOCK = Path(__file__).with_name("kafka.lock.json")
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
MIN_JAVA = 17
DOWNLOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class Artifact:
    group: str
    artifact: str
    version: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repo: str) -> str:
        return (f"{repo.rstrip('/')}/{self.group.replace('.', '/')}/{self.artifact}/"
                f"{self.version}/{self.filename}")


def load_lock(path: Path = LOCK) -> tuple[str, list[Artifact]]:
    """The pinned Kafka version and its jars."""
    data = json.loads(path.read_text())
    return data["kafka_version"], [Artifact(**a) for a in data["artifacts"]]


def cache_dir() -> Path:
    explicit = os.environ.get("IMGPIPE_KAFKA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgpipe" / "kafka"


# -- Java ---------------------------------------------------------------------
def java_version(java: str) -> int | None:
    """The major version of a ``java`` binary (``17`` for 17.0.15), or None."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True,
                             timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def find_java() -> str | None:
    """A Java 17+ runtime: ``$JAVA_HOME/bin/java``, else ``java`` on the PATH."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if found := shutil.which("java"):
        candidates.append(found)
    for java in candidates:
        version = java_version(java)
        if version is not None and version >= MIN_JAVA:
            return java
    return None


# -- jars ---------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_jars(cache: Path | None = None, *, lock: Path = LOCK,
               progress: bool = True) -> list[Path]:
    """Every jar of the lock, verified, downloading what the cache lacks.

    A cached jar whose checksum does not match is downloaded again; a download
    whose checksum does not match is an error (nothing is kept)."""
    version, artifacts = load_lock(lock)
    folder = (cache or cache_dir()) / version
    folder.mkdir(parents=True, exist_ok=True)
    repo = os.environ.get("IMGPIPE_MAVEN_REPO", MAVEN_CENTRAL)
    missing = [a for a in artifacts if not _cached_ok(folder / a.filename, a)]
    if missing:
        total = sum(a.size for a in missing)
        log.info("downloading Apache Kafka %s: %s jars, %.1f MB, from %s into %s",
                 version, len(missing), total / 1e6, repo, folder)
        from tqdm import tqdm

        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"Apache Kafka {version}", disable=not progress,
                  file=sys.stderr) as bar:
            for a in missing:
                _download(a, repo, folder / a.filename, bar.update)
    return [folder / a.filename for a in artifacts]


def _cached_ok(path: Path, a: Artifact) -> bool:
    return path.exists() and path.stat().st_size == a.size and sha256_of(path) == a.sha256


def _download(a: Artifact, repo: str, dest: Path, advance: object) -> None:
    url = a.url(repo)
    last: Exception | None = None
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
        digest, done = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    advance(len(chunk))  # type: ignore[operator]
            if digest.hexdigest() != a.sha256:
                raise StackError(
                    f"checksum mismatch for {url}: expected sha256 {a.sha256}, got "
                    f"{digest.hexdigest()}. The download was discarded; check "
                    "IMGPIPE_MAVEN_REPO (a mirror serving other bytes) and try again.")
            os.replace(tmp, dest)
            return
        except StackError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:  # network trouble: retry, counting the bytes again
            tmp.unlink(missing_ok=True)
            advance(-done)  # type: ignore[operator]
            last = exc
            if attempt < DOWNLOAD_ATTEMPTS:
                time.sleep(backoff(attempt, base=1.0, cap=10.0))
    raise StackError(f"could not download {url} after {DOWNLOAD_ATTEMPTS} attempts: {last}. "
                     "Is Maven Central (or IMGPIPE_MAVEN_REPO) reachable?")


# -- the node -----------------------------------------------------------------
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def server_properties(log_dir: Path, port: int, controller_port: int,
                      partitions: int) -> str:
    """A single KRaft node for development: broker + controller on loopback,
    replication factor 1 everywhere, no automatic topic creation (imgpipe
    creates its topics with explicit configs, see shared/kafka.py)."""
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={log_dir}",
        f"num.partitions={partitions}",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ])


def cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding
    (never starting with '-', which the storage tool would read as a flag)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


@dataclass
class KafkaNode:
    """Files and commands of one local node under ``home`` (config, data, cluster id)."""

    home: Path
    java: str
    jars: list[Path]
    heap: str = "512m"

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def classpath(self) -> str:
        return os.pathsep.join(str(j) for j in self.jars)

    def jvm(self, main: str, *args: str) -> list[str]:
        return [self.java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "-cp", self.classpath(), main, *args]

    def prepare(self, port: int, controller_port: int, partitions: int) -> None:
        """Write the config and format the storage once (kept across starts)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "log4j2.properties").write_text(LOG4J2)
        self.config.write_text(server_properties(self.data, port, controller_port, partitions))
        if (self.data / "meta.properties").exists():
            return
        id_file = self.home / "cluster-id"
        if not id_file.exists():
            id_file.write_text(cluster_id())
        result = subprocess.run(
            self.jvm("kafka.tools.StorageTool", "format", "-t", id_file.read_text().strip(),
                     "-c", str(self.config), "--ignore-formatted"),
            capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise StackError("formatting the Kafka storage failed:\n"
                             + (result.stdout + result.stderr)[-2000:])

    def server_command(self) -> list[str]:
        return self.jvm("kafka.Kafka", str(self.config))


def metadata_ready(port: int, timeout: float = 5.0) -> bool:
    """Whether the broker answers a metadata request naming itself as a live
    broker with a controller (the node is serving, not merely listening)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    from deploy.procs import port_open

    if not port_open(port):
        return False

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}",
                                    request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
        finally:
            await admin.close()
        return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) >= 0

    # In a thread of its own: callers may be inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe()).result()


# -- lock maintenance (needs Maven) ---------------------------------------------
POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>imgpipe</groupId><artifactId>kafka-lock</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def write_lock(version: str, log4j: str, path: Path = LOCK) -> None:
    """Resolve ``kafka_2.13:version`` (runtime scope) with Maven, check every
    jar against Maven Central's own .sha1, and write sizes and SHA-256 sums."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(POM.format(version=version, log4j=log4j))
        listing = Path(tmp) / "deps.txt"
        subprocess.run(["mvn", "-q", "-B", "dependency:list", "-DincludeScope=runtime",
                        "-DoutputAbsoluteArtifactFilename=true", f"-DoutputFile={listing}"],
                       cwd=tmp, check=True)
        artifacts = []
        for line in listing.read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) < 6 or parts[2] != "jar":
                continue
            group, artifact, _, ver, _scope, jar = parts[:6]
            jar_path = Path(jar.split(" ")[0])
            a = Artifact(group, artifact, ver, jar_path.stat().st_size, sha256_of(jar_path))
            with urllib.request.urlopen(a.url(MAVEN_CENTRAL) + ".sha1", timeout=60) as resp:
                central = resp.read().decode().split()[0]
            local = hashlib.sha1(jar_path.read_bytes()).hexdigest()
            if central != local:
                raise StackError(f"{a.filename}: local sha1 {local} != Maven Central {central}")
            artifacts.append(a.__dict__)
    artifacts.sort(key=lambda a: (a["group"], a["artifact"]))
    rows = ",\n".join("  " + json.dumps(a) for a in artifacts)
    path.write_text(f'{{"kafka_version": "{version}", "artifacts": [\n{rows}\n]}}\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download and verify the pinned jars")
    lock = sub.add_parser("lock", help="rewrite deploy/kafka.lock.json (needs mvn)")
    lock.add_argument("version")
    lock.add_argument("--log4j", default="2.25.5", help="log4j-slf4j-impl version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fetch":
            jars = fetch_jars()
            log.info("%s jars verified in %s", len(jars), jars[0].parent)
        else:
            write_lock(args.version, args.log4j)
    except StackError as exc:
        log.error("error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
