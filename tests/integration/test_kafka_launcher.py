"""The Apache Kafka launcher: pinned jars verified by SHA-256, Java detection,
and the broker choice (deploy/kafka.py, deploy/brokers.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from deploy import brokers, kafka
from deploy.procs import StackError
from tests.conftest import HttpServer


def lock_for(tmp: Path, jars: dict[str, bytes], *, wrong: str = "") -> Path:
    """A lock of fake jars under group ``org.example`` (``wrong``: a bad checksum)."""
    rows = [{"group": "org.example", "artifact": name, "version": "1.0", "size": len(data),
             "sha256": "0" * 64 if name == wrong else hashlib.sha256(data).hexdigest()}
            for name, data in jars.items()]
    path = tmp / "lock.json"
    path.write_text(json.dumps({"kafka_version": "9.9.9", "artifacts": rows}))
    return path


def serve(http_server: HttpServer, jars: dict[str, bytes]) -> None:
    for name, data in jars.items():
        http_server.files[f"org/example/{name}/1.0/{name}-1.0.jar"] = (data, "application/java")


JARS = {"alpha": os.urandom(3000), "beta": os.urandom(70_000)}


def test_jars_are_downloaded_once_and_verified(tmp_path: Path, http_server: HttpServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    serve(http_server, JARS)
    monkeypatch.setenv("IMGPIPE_MAVEN_REPO", http_server.url(""))
    lock = lock_for(tmp_path, JARS)
    paths = kafka.fetch_jars(tmp_path / "cache", lock=lock, progress=False)
    assert [p.read_bytes() for p in paths] == list(JARS.values())
    assert paths[0].parent == tmp_path / "cache" / "9.9.9"
    hits = dict(http_server.hits)
    kafka.fetch_jars(tmp_path / "cache", lock=lock, progress=False)
    assert http_server.hits == hits  # a later start needs no network

    paths[1].write_bytes(b"corrupted")  # a damaged cache is repaired
    kafka.fetch_jars(tmp_path / "cache", lock=lock, progress=False)
    assert paths[1].read_bytes() == JARS["beta"]


def test_a_checksum_mismatch_is_an_error_and_keeps_nothing(
        tmp_path: Path, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(http_server, JARS)
    monkeypatch.setenv("IMGPIPE_MAVEN_REPO", http_server.url(""))
    with pytest.raises(StackError, match=r"checksum mismatch.*beta-1\.0\.jar"):
        kafka.fetch_jars(tmp_path / "cache", lock=lock_for(tmp_path, JARS, wrong="beta"),
                         progress=False)
    assert sorted(p.name for p in (tmp_path / "cache" / "9.9.9").iterdir()) == ["alpha-1.0.jar"]


def test_an_unreachable_repository_says_so(tmp_path: Path, http_server: HttpServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_MAVEN_REPO", http_server.url("nothing-here"))
    monkeypatch.setattr(kafka.time, "sleep", lambda s: None)
    with pytest.raises(StackError, match=r"could not download .*IMGPIPE_MAVEN_REPO"):
        kafka.fetch_jars(tmp_path / "cache", lock=lock_for(tmp_path, JARS), progress=False)


def test_the_real_lock_pins_kafka_4_with_sums() -> None:
    version, artifacts = kafka.load_lock()
    assert version.startswith("4.")
    names = {a.artifact for a in artifacts}
    assert {"kafka_2.13", "kafka-clients", "kafka-server", "log4j-slf4j-impl"} <= names
    assert all(len(a.sha256) == 64 and a.size > 0 for a in artifacts)
    compose = (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    assert f"apache/kafka:{version}" in compose  # production runs what the tests run


def fake_java(folder: Path, version_line: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return java


@pytest.mark.parametrize(("line", "major"), [
    ('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_412"', 8),
    ('openjdk version "25" 2025-09-16', 25), ("no version here", None)])
def test_java_versions_are_read(tmp_path: Path, line: str, major: int | None) -> None:
    assert kafka.java_version(str(fake_java(tmp_path, line))) == major


def test_without_java_17_the_broker_is_tansu_with_one_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    old = fake_java(tmp_path / "jdk8" / "bin", 'java version "1.8.0_412"')
    monkeypatch.setenv("JAVA_HOME", str(old.parent.parent))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert kafka.find_java() is None
    with caplog.at_level(logging.WARNING):
        assert brokers.choose_broker("") == "tansu"
    [warning] = [r.getMessage() for r in caplog.records]
    assert "no Java 17+" in warning and "IMGPIPE_BROKER=tansu" in warning
    with pytest.raises(StackError, match="IMGPIPE_BROKER=kafka needs a Java 17"):
        brokers.choose_broker("kafka")
    caplog.clear()
    assert brokers.choose_broker("tansu") == "tansu" and not caplog.records


def test_with_java_17_the_broker_is_kafka(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    java = fake_java(tmp_path / "jdk" / "bin", 'openjdk version "17.0.15" 2025-04-15')
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    assert kafka.find_java() == str(java)
    assert brokers.choose_broker("") == "kafka"
    with pytest.raises(StackError, match="not a broker"):
        brokers.choose_broker("rabbitmq")


def test_a_cluster_id_is_a_kafka_uuid() -> None:
    ids = {kafka.cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
