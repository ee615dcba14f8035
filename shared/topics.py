"""The one place topic names are defined.

Every topic is ``<prefix>.<name>``; the prefix (``IMGPIPE_TOPIC_PREFIX``) lets
tests and parallel environments share one broker without seeing each other.
"""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    REQUEST_CREATED = "request.created.v1"
    IMAGE_REQUESTED = "image.requested.v1"
    IMAGE_DONE = "image.done.v1"
    REQUEST_COMPLETED = "request.completed.v1"
    DEAD_LETTER = "deadletter.v1"

    def full(self, prefix: str) -> str:
        return f"{prefix}.{self.value}"


def all_topics(prefix: str) -> list[str]:
    return [t.full(prefix) for t in Topic]
