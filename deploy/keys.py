"""The operator's CLI for tenants and API keys (``python -m deploy.keys``).

    python -m deploy.keys create --tenant acme [--label "shop backend"]
    python -m deploy.keys list [--tenant acme]
    python -m deploy.keys revoke KEY_ID
    python -m deploy.keys rotate-webhook-secret --tenant acme
    python -m deploy.keys finish-rotation --tenant acme

``create`` prints the key once (only its hash is stored) and, when the key
makes a new tenant, the tenant's webhook secret. It connects with the
services' settings (IMGPIPE_MONGO_URI, IMGPIPE_MONGO_DB). ``--json`` prints
one JSON document for scripts. Exit codes: 0 done, 1 not found, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared import tenants
from shared.errors import InvalidInputError
from shared.mongo import Store, make_client
from shared.settings import CommonSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.keys",
                                description="Tenants and API keys of imgpipe.")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="a new API key (and the tenant, if new)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--label", default="", help="what the key is for")
    create.add_argument("--webhook-secret", default=None,
                        help="a new tenant's webhook secret (whsec_...), instead of a fresh one")
    listing = sub.add_parser("list", help="keys (never their secrets)")
    listing.add_argument("--tenant", default=None)
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    for name, what in (("rotate-webhook-secret", "a new webhook secret; the old one stays "
                                                 "valid until finish-rotation"),
                       ("finish-rotation", "drop the old webhook secret")):
        sub.add_parser(name, help=what).add_argument("--tenant", required=True)
    return p


async def run(args: argparse.Namespace, store: Store) -> tuple[int, dict[str, Any], str]:
    """(exit code, JSON result, text for people)."""
    if args.command == "create":
        made = await tenants.create_key(store, args.tenant, label=args.label,
                                        webhook_secret=args.webhook_secret)
        text = (f"API key for tenant {made.tenant} (shown once, keep it secret):\n"
                f"  {made.token}\n")
        if made.webhook_secret:
            text += ("New tenant: its webhooks are signed with this secret (give it to the "
                     f"receiver):\n  {made.webhook_secret}\n")
        return 0, {"key": made.token, "key_id": made.key_id, "tenant": made.tenant,
                   "webhook_secret": made.webhook_secret}, text
    if args.command == "list":
        keys = await tenants.list_keys(store, args.tenant)
        rows = [f"{k['_id']}  {k['tenant']:<20} {_when(k['created_at'])}  "
                f"{'revoked ' + _when(k['revoked_at']) if k.get('revoked_at') else 'live':<27}"
                f"  {k.get('label') or ''}" for k in keys]
        return 0, {"keys": [{**{n: v for n, v in k.items() if n != "_id"}, "key_id": k["_id"],
                             "created_at": _when(k["created_at"]),
                             "revoked_at": _when(k.get("revoked_at"))} for k in keys]}, \
            "\n".join(rows) + ("\n" if rows else "no keys\n")
    if args.command == "revoke":
        done = await tenants.revoke_key(store, args.key_id)
        return (0 if done else 1), {"revoked": done, "key_id": args.key_id}, (
            f"revoked {args.key_id}\n" if done else f"no live key {args.key_id}\n")
    if args.command == "rotate-webhook-secret":
        secret = await tenants.rotate_webhook_secret(store, args.tenant)
        return 0, {"tenant": args.tenant, "webhook_secret": secret}, (
            f"Webhooks of {args.tenant} are now signed with the new secret and the old one:\n"
            f"  {secret}\nGive it to the receiver, then run finish-rotation.\n")
    await tenants.finish_rotation(store, args.tenant)
    return 0, {"tenant": args.tenant, "finished": True}, (
        f"{args.tenant}'s webhooks are signed with the newest secret only\n")


def _when(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at else ""


async def amain(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = CommonSettings()
    client = make_client(settings)
    try:
        store = Store.from_client(client, settings)
        await store.ensure_indexes()
        code, result, text = await run(args, store)
    except InvalidInputError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    finally:
        await client.close()
    sys.stdout.write(json.dumps(result) + "\n" if args.json else text)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(amain()))
