"""Object storage over the S3 API (any S3 server: SeaweedFS, MinIO, AWS)."""

from __future__ import annotations

import asyncio
import io
import json
from typing import IO, BinaryIO, cast

from minio import Minio

from shared.settings import CommonSettings


class ObjectStore:
    """A thin async wrapper: the minio client is blocking, so calls run in threads."""

    def __init__(self, settings: CommonSettings) -> None:
        self._settings = settings
        self.bucket = settings.output_bucket
        self._client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )

    def public_url(self, key: str) -> str:
        return self._settings.public_object_url(key)

    async def ensure_bucket(self, *, public_read: bool = True) -> None:
        await asyncio.to_thread(self._ensure_bucket_sync, public_read)

    def _ensure_bucket_sync(self, public_read: bool) -> None:
        if not self._client.bucket_exists(self.bucket):
            self._client.make_bucket(self.bucket)
        if public_read:
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": ["*"]},
                        "Action": ["s3:GetObject"],
                        "Resource": [f"arn:aws:s3:::{self.bucket}/*"],
                    }
                ],
            }
            self._client.set_bucket_policy(self.bucket, json.dumps(policy))

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload (overwriting any object at ``key``) and return its public URL."""
        return await self.put_file(key, io.BytesIO(data), len(data), content_type)

    async def put_file(self, key: str, data: IO[bytes], length: int, content_type: str) -> str:
        """Upload ``length`` bytes read from ``data`` (streamed by the client)."""
        await asyncio.to_thread(
            self._client.put_object, self.bucket, key, cast(BinaryIO, data), length,
            content_type=content_type)
        return self.public_url(key)
