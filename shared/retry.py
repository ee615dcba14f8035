"""What to retry, and how long to wait: shared by every consumer.

An exception is *transient* when the same call may well succeed later: our
own ``TransientError``, and the infrastructure failures of the clients we use
(network, MongoDB, Kafka, S3). Anything else is a bug or bad data: retrying it
forever would stall a partition, so consumers retry it a few times and then
dead-letter the message.
"""

from __future__ import annotations

import random

from aiokafka.errors import KafkaError
from minio.error import MinioException
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from urllib3.exceptions import HTTPError as Urllib3Error

from shared.errors import TransientError

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError, OSError, TimeoutError, ConnectionFailure, KafkaError, MinioException,
    Urllib3Error,
)
# Attempts for an exception that is neither transient nor an ImgpipeError.
MAX_UNEXPECTED_ATTEMPTS = 5


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    # Server-side MongoDB errors flagged retryable (e.g. not primary, shutdown).
    if isinstance(exc, OperationFailure | PyMongoError):
        return exc.has_error_label("RetryableWriteError") or exc.timeout
    return False


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: attempt 1 -> ~0.5 s, doubling, capped."""
    return min(cap, base * 2 ** min(attempt - 1, 16)) * random.uniform(0.5, 1.0)
