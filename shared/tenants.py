"""Tenants, their API keys and their webhook secrets (docs/api.md, "Authentication").

An API key reads ``imgpipe_<key id>_<secret>``. The key id (12 hex digits) is
the ``api_keys`` document's ``_id``; of the secret only its SHA-256 is stored
(a key is 32 random bytes: a fast hash is enough, nothing to brute-force), so
a copy of the database lets no one call the API. A key is shown once, when it
is made (``python -m deploy.keys create``); it can be listed (id, tenant,
label, dates: never the secret) and revoked.

A tenant is made with its first key; its ``webhook_secrets`` (``whsec_…``,
the current one first) sign its webhooks. Rotation adds a new secret in front
of the current one (webhooks are signed with both while receivers move over)
and ``finish`` drops the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError

from shared import webhook_signing
from shared.errors import InvalidInputError
from shared.events import now_utc
from shared.mongo import Store

PREFIX = "imgpipe_"
TOKEN = re.compile(r"imgpipe_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_SECRETS = 2  # the current one and, during a rotation, the one before


class TenantInvalid(InvalidInputError):
    code = "tenant_invalid"


@dataclass(frozen=True)
class Tenant:
    """Who is calling: the tenant and the key it called with."""

    id: str
    key_id: str


@dataclass(frozen=True)
class NewKey:
    token: str  # shown once
    key_id: str
    tenant: str
    webhook_secret: str | None  # set when this key made the tenant


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    found = TOKEN.fullmatch(token.strip())
    return (found.group(1), found.group(2)) if found else None


def check_tenant_id(tenant: str) -> str:
    if not TENANT_ID.fullmatch(tenant):
        raise TenantInvalid(f"tenant id {tenant!r}: use 1-63 lower-case letters, digits, "
                            "'-' or '_', starting with a letter or digit")
    return tenant


async def create_key(store: Store, tenant: str, *, label: str = "",
                     webhook_secret: str | None = None) -> NewKey:
    """A new key of ``tenant``, making the tenant (with a fresh webhook secret,
    or ``webhook_secret`` if given) when it is new."""
    check_tenant_id(tenant)
    if webhook_secret:
        webhook_signing.secret_key(webhook_secret)  # refuse a malformed one now
    secret = webhook_secret or webhook_signing.new_secret()
    made = await store.tenants.update_one(
        {"_id": tenant},
        {"$setOnInsert": {"created_at": now_utc(), "webhook_secrets": [secret]}}, upsert=True)
    while True:
        key_id, key_secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        try:
            await store.api_keys.insert_one({
                "_id": key_id, "tenant": tenant, "secret_sha256": secret_hash(key_secret),
                "label": label, "created_at": now_utc(), "revoked_at": None})
            break
        except DuplicateKeyError:  # 48 random bits: once in a blue moon
            continue
    return NewKey(f"{PREFIX}{key_id}_{key_secret}", key_id, tenant,
                  secret if made.upserted_id is not None else None)


async def list_keys(store: Store, tenant: str | None = None) -> list[dict[str, Any]]:
    query = {"tenant": tenant} if tenant else {}
    return [doc async for doc in store.api_keys.find(query, {"secret_sha256": 0}).sort(
        [("tenant", 1), ("created_at", 1)])]


async def revoke_key(store: Store, key_id: str) -> bool:
    """True if the key was live and is revoked now."""
    result = await store.api_keys.update_one({"_id": key_id, "revoked_at": None},
                                             {"$set": {"revoked_at": now_utc()}})
    return bool(result.modified_count)


async def lookup(store: Store, token: str) -> Tenant | None:
    """The tenant of a live key, None for anything else (malformed, unknown,
    revoked, wrong secret): the caller cannot tell which."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    doc = await store.api_keys.find_one({"_id": key_id})
    if doc is None or doc.get("revoked_at") is not None:
        return None
    if not hmac.compare_digest(doc["secret_sha256"], secret_hash(secret)):
        return None
    return Tenant(doc["tenant"], key_id)


async def webhook_secrets(store: Store, tenant: str) -> list[str]:
    doc = await store.tenants.find_one({"_id": tenant}, {"webhook_secrets": 1})
    return list((doc or {}).get("webhook_secrets") or [])


async def rotate_webhook_secret(store: Store, tenant: str) -> str:
    """Put a new secret in front; the current one stays valid until ``finish``."""
    secret = webhook_signing.new_secret()
    result = await store.tenants.update_one(
        {"_id": tenant},
        {"$push": {"webhook_secrets": {"$each": [secret], "$position": 0,
                                       "$slice": MAX_SECRETS}}})
    if not result.matched_count:
        raise TenantInvalid(f"no tenant {tenant!r}: a tenant is made with its first key")
    return secret


async def finish_rotation(store: Store, tenant: str) -> None:
    """Drop every secret but the newest."""
    result = await store.tenants.update_one(
        {"_id": tenant}, {"$push": {"webhook_secrets": {"$each": [], "$slice": 1}}})
    if not result.matched_count:
        raise TenantInvalid(f"no tenant {tenant!r}")
