"""The output bucket is private on the real S3 server (SeaweedFS): anonymous
reads are refused, and the public-read policy an earlier version set is removed."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from minio.error import S3Error

from shared.storage import ObjectStore
from tests.flows import settings_of

pytestmark = pytest.mark.stack
PUBLIC_READ = {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"]}


@pytest.fixture
async def objects(stack_env: dict[str, str]) -> AsyncIterator[ObjectStore]:
    """An ObjectStore on a bucket of its own (created by ensure_bucket)."""
    bucket = f"private-{uuid.uuid4().hex[:10]}"
    store = ObjectStore(settings_of({**stack_env, "IMGPIPE_OUTPUT_BUCKET": bucket}))
    await store.ensure_bucket()
    yield store
    client = store._client
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, obj.object_name or "")
    client.remove_bucket(bucket)


async def anonymous(url: str) -> int:
    """The status a GET without credentials or signature gets."""
    async with httpx.AsyncClient() as client:
        return (await client.get(url)).status_code


def policy_of(store: ObjectStore) -> str | None:
    try:
        return store._client.get_bucket_policy(store.bucket)
    except S3Error as exc:
        assert exc.code == "NoSuchBucketPolicy", exc
        return None


async def test_a_new_bucket_refuses_anonymous_reads(objects: ObjectStore) -> None:
    url = await objects.put("r/a.jpg", b"\xff\xd8 not really", "image/jpeg")
    assert url == objects.object_url("r/a.jpg")
    assert await anonymous(url) == 403  # no credentials: refused
    assert await objects.get("r/a.jpg") == b"\xff\xd8 not really"  # the services read it
    assert policy_of(objects) is None


async def test_the_public_read_policy_of_an_earlier_version_is_removed(
        objects: ObjectStore) -> None:
    url = await objects.put("r/b.csv", b"a,b\r\n", "text/csv")
    statement = {**PUBLIC_READ, "Resource": [f"arn:aws:s3:::{objects.bucket}/*"]}
    objects._client.set_bucket_policy(objects.bucket, json.dumps(
        {"Version": "2012-10-17", "Statement": [statement]}))
    assert await anonymous(url) == 200  # what the earlier version left behind
    await objects.ensure_bucket()
    assert policy_of(objects) is None
    assert await anonymous(url) == 403
    await objects.ensure_bucket()  # again: nothing to remove, no error
    assert await anonymous(url) == 403
