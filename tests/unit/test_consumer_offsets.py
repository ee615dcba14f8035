"""What the consumer loop may commit: never past a message still in flight."""

from __future__ import annotations

from aiokafka import TopicPartition

from shared.consumer import _Tracker

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_commits_stop_below_the_oldest_message_in_flight() -> None:
    t = _Tracker()
    for off in (10, 11, 12):
        t.start(A, off)
    t.finish(A, 12)
    t.finish(A, 10)
    assert t.committable() == {A: 11}  # 11 is still running: redeliver from it
    t.finish(A, 11)
    assert t.committable() == {A: 13}


def test_partitions_are_independent() -> None:
    t = _Tracker()
    t.start(A, 5)
    t.start(B, 7)
    t.finish(B, 7)
    assert t.committable() == {B: 8}  # A has nothing finished yet
    t.start(A, 6)
    t.finish(A, 6)
    assert t.committable() == {A: 5, B: 8}


def test_revoked_partitions_are_forgotten() -> None:
    t = _Tracker()
    t.start(A, 1)
    t.finish(A, 1)
    t.start(B, 3)
    t.forget({A})
    assert t.committable() == {}
    t.finish(B, 3)
    assert t.committable() == {B: 4}
