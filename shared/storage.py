"""Object storage over the S3 API (any S3 server: SeaweedFS, MinIO, AWS)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import IO, Any, BinaryIO, cast

from minio import Minio
from minio.error import S3Error

from shared.settings import CommonSettings

log = logging.getLogger(__name__)
NO_POLICY = "NoSuchBucketPolicy"


def grants_everyone(statement: dict[str, Any]) -> bool:
    """A policy statement that allows anyone (principal ``*``) anything."""
    if statement.get("Effect") != "Allow":
        return False
    principal = statement.get("Principal")
    if isinstance(principal, dict):
        principal = principal.get("AWS")
    found = principal if isinstance(principal, list) else [principal]
    return "*" in found


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

    def object_url(self, key: str) -> str:
        """The canonical (unsigned) URL of an object: stored, never opened as is."""
        return self._settings.public_object_url(key)

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing. It is private: objects are opened with
        presigned links (shared/links.py). A public-read grant an earlier version
        set (a policy statement allowing ``*``) is removed."""
        await asyncio.to_thread(self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        if not self._client.bucket_exists(self.bucket):
            self._client.make_bucket(self.bucket)
        try:
            text = self._client.get_bucket_policy(self.bucket)
        except S3Error as exc:
            if exc.code == NO_POLICY:
                return
            raise
        policy = json.loads(text) if text.strip() else {}
        found = policy.get("Statement") or []
        statements = [found] if isinstance(found, dict) else list(found)
        kept = [st for st in statements if not grants_everyone(st)]
        if len(kept) == len(statements):
            return
        if kept:
            self._client.set_bucket_policy(self.bucket, json.dumps({**policy, "Statement": kept}))
        else:
            try:
                self._client.delete_bucket_policy(self.bucket)
            except S3Error as exc:
                if exc.code != NO_POLICY:  # another service removed it meanwhile
                    raise
        log.warning("bucket %s: removed its public-read policy (%s statements); it is "
                    "private now", self.bucket, len(statements) - len(kept))

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload (overwriting any object at ``key``) and return its canonical URL."""
        return await self.put_file(key, io.BytesIO(data), len(data), content_type)

    async def put_file(self, key: str, data: IO[bytes], length: int, content_type: str) -> str:
        """Upload ``length`` bytes read from ``data`` (streamed by the client)."""
        await asyncio.to_thread(
            self._client.put_object, self.bucket, key, cast(BinaryIO, data), length,
            content_type=content_type)
        return self.object_url(key)

    async def get(self, key: str) -> bytes:
        """An object's bytes, read with the service's credentials."""
        return await asyncio.to_thread(self._get_sync, key)

    def _get_sync(self, key: str) -> bytes:
        resp = self._client.get_object(self.bucket, key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()
