"""The embedded local stack: start, reuse, stop, restart without losing data."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import MongoClient

from deploy.brokers import BROKERS
from deploy.localstack import LocalStack
from deploy.procs import StackError, free_port, pid_alive

pytestmark = pytest.mark.stack


def test_a_taken_port_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = LocalStack(tmp_path, s3_port=free_port(), kafka_port=port,
                           mongo_port=free_port())
        with pytest.raises(StackError) as err:
            stack.up()
    message = str(err.value)
    assert str(port) in message and "IMGPIPE_STACK_KAFKA_PORT" in message
    assert stack.status() == {}  # nothing was started, nothing left behind


@pytest.mark.parametrize("broker", BROKERS)
async def test_restart_keeps_topics_documents_and_offsets(tmp_path: Path, broker: str) -> None:
    stack = LocalStack(tmp_path, s3_port=free_port(), kafka_port=free_port(),
                       mongo_port=free_port(), kafka_storage="s3", broker=broker)
    state = stack.up()
    assert state.broker == broker
    assert stack.up().pids == state.pids  # a healthy stack is reused, not restarted
    bootstrap = f"127.0.0.1:{state.kafka_port}"
    topic = f"persist-{uuid.uuid4().hex[:8]}"
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        for i in range(5):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
        await producer.stop()
        with MongoClient[dict[str, Any]](f"mongodb://127.0.0.1:{state.mongo_port}") as client:
            client.persist.docs.insert_one({"_id": "kept"})

        stack.down()
        assert not any(pid_alive(pid) for pid in state.pids.values())  # no orphans
        state = stack.up()

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        values: list[bytes] = []
        try:
            while len(values) < 5:
                batch = await consumer.getmany(timeout_ms=10_000)
                if not batch:
                    break
                values += [r.value for recs in batch.values() for r in recs if r.value]
        finally:
            await consumer.stop()
        assert values == [f"m{i}".encode() for i in range(5)]
        with MongoClient[dict[str, Any]](f"mongodb://127.0.0.1:{state.mongo_port}") as client:
            assert client.persist.docs.find_one({"_id": "kept"}) is not None
    finally:
        stack.down()
