"""ensure_bucket keeps the output bucket private: public grants are removed,
any other statement of the bucket's policy is kept."""

from __future__ import annotations

import json
from typing import Any

import pytest
from minio.error import S3Error

from shared.settings import CommonSettings
from shared.storage import ObjectStore, grants_everyone

PUBLIC = {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
          "Resource": ["arn:aws:s3:::outs/*"]}
OTHER = {"Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::1:root"]},
         "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::outs/*"]}


class FakeClient:
    """The minio calls ensure_bucket makes, on one bucket's policy."""

    def __init__(self, policy: dict[str, Any] | None) -> None:
        self.policy = None if policy is None else json.dumps(policy)
        self.calls: list[str] = []

    def bucket_exists(self, bucket: str) -> bool:
        return True

    def get_bucket_policy(self, bucket: str) -> str:
        if self.policy is None:
            raise S3Error(None, "NoSuchBucketPolicy", "no policy", bucket,  # type: ignore[arg-type]
                          "r", "h", bucket)
        return self.policy

    def set_bucket_policy(self, bucket: str, policy: str) -> None:
        self.calls.append("set")
        self.policy = policy

    def delete_bucket_policy(self, bucket: str) -> None:
        self.calls.append("delete")
        self.policy = None


def ensure(policy: dict[str, Any] | None) -> FakeClient:
    store = ObjectStore(CommonSettings(output_bucket="outs"))
    fake = FakeClient(policy)
    store._client = fake  # type: ignore[assignment]
    store._ensure_bucket_sync()
    return fake


def test_a_public_read_policy_is_deleted() -> None:
    fake = ensure({"Version": "2012-10-17", "Statement": [PUBLIC]})
    assert fake.calls == ["delete"] and fake.policy is None


def test_other_statements_are_kept() -> None:
    fake = ensure({"Version": "2012-10-17", "Statement": [PUBLIC, OTHER]})
    assert fake.calls == ["set"] and fake.policy is not None
    assert json.loads(fake.policy) == {"Version": "2012-10-17", "Statement": [OTHER]}


@pytest.mark.parametrize("policy", [None, {"Version": "2012-10-17", "Statement": [OTHER]}])
def test_a_private_bucket_is_left_alone(policy: dict[str, Any] | None) -> None:
    assert ensure(policy).calls == []


@pytest.mark.parametrize(("statement", "public"), [
    (PUBLIC, True),
    ({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject"}, True),
    ({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}, True),
    ({"Effect": "Deny", "Principal": "*", "Action": "s3:*"}, False),
    (OTHER, False),
])
def test_public_grants_are_recognised(statement: dict[str, Any], public: bool) -> None:
    assert grants_everyone(statement) is public
