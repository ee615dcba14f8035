"""API keys and tenants, through the running services (real stack, real HTTP).

Every API route wants a key; a tenant sees its own requests only: another
tenant's id answers exactly as an unknown one, and an Idempotency-Key is the
tenant's own."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.conftest import Pipeline, bearer, keys_cli

pytestmark = pytest.mark.stack
CSV = "S. No.,Product Name,Input Image Urls\n1,Lamp,https://img.invalid/{tag}.jpg\n"


def api_routes(base: str) -> list[tuple[str, str]]:
    """(method, path) of every route the service's OpenAPI document lists, but /health."""
    doc = httpx.get(f"{base}/openapi.json").json()
    return [(method.upper(), path) for path, ops in doc["paths"].items() if path != "/health"
            for method in ops]


def call(base: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = base + path.replace("{request_id}", str(uuid.uuid4()))
    if method == "POST":
        return httpx.post(url, headers=headers, files={"file": ("p.csv", "x", "text/csv")})
    return httpx.get(url, headers=headers)


@pytest.mark.parametrize("auth", [
    None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz",
    "Bearer imgpipe_000000000000_" + "A" * 43])
def test_every_api_route_refuses_a_call_without_a_valid_key(pipeline: Pipeline,
                                                            auth: str | None) -> None:
    routes = [(pipeline.ingest_url, m, p) for m, p in api_routes(pipeline.ingest_url)
              if "callbacks" not in p]  # callbacks are signed by the service, not keyed
    routes += [(pipeline.status_url, m, p) for m, p in api_routes(pipeline.status_url)]
    assert len(routes) >= 4, routes
    for base, method, path in routes:
        resp = call(base, method, path, {"Authorization": auth} if auth else {})
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["code"] == "unauthorized", resp.text


def test_another_tenant_sees_none_of_a_request(pipeline: Pipeline) -> None:
    tag = uuid.uuid4().hex
    a = httpx.post(f"{pipeline.ingest_url}/api/v1/requests", headers={
        **bearer(pipeline.key), "Idempotency-Key": tag},
        files={"file": ("p.csv", CSV.format(tag=tag), "text/csv")})
    assert a.status_code == 202, a.text
    rid = a.json()["request_id"]
    other = pipeline.new_key()["key"]
    base = f"{pipeline.status_url}/api/v1/requests"
    for path in ("", "/products", "/output.csv"):
        mine = httpx.get(f"{base}/{rid}{path}", headers=bearer(pipeline.key))
        assert mine.status_code in (200, 409), mine.text  # 409: the CSV is not ready yet
        theirs = httpx.get(f"{base}/{rid}{path}", headers=bearer(other))
        unknown = httpx.get(f"{base}/{uuid.uuid4()}{path}", headers=bearer(other))
        assert theirs.status_code == unknown.status_code == 404, theirs.text
        assert theirs.json()["code"] == unknown.json()["code"] == "request_not_found"
        assert rid in theirs.json()["detail"]  # only the id they sent, nothing of A's

    # The same Idempotency-Key and file from another tenant: a request of its own.
    b = httpx.post(f"{pipeline.ingest_url}/api/v1/requests", headers={
        **bearer(other), "Idempotency-Key": tag},
        files={"file": ("p.csv", CSV.format(tag=tag), "text/csv")})
    assert b.status_code == 202, b.text
    assert b.json()["request_id"] != rid
    assert httpx.get(f"{base}/{b.json()['request_id']}", headers=bearer(other)).status_code \
        == 200
    # ...and a different file under that key is no conflict either: the key is B's now.
    c = httpx.post(f"{pipeline.ingest_url}/api/v1/requests", headers={
        **bearer(pipeline.new_key()["key"]), "Idempotency-Key": tag},
        files={"file": ("q.csv", CSV.format(tag=tag + "x"), "text/csv")})
    assert c.status_code == 202, c.text
    again = httpx.post(f"{pipeline.ingest_url}/api/v1/requests", headers={
        **bearer(pipeline.key), "Idempotency-Key": tag},
        files={"file": ("p.csv", CSV.format(tag=tag), "text/csv")})
    assert again.json()["request_id"] == rid  # A's key still answers A's request


def test_keys_are_listed_without_secrets_and_a_revoked_key_stops_working(
        pipeline: Pipeline) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    made = pipeline.new_key(tenant)
    second = pipeline.new_key(tenant)  # a second key of the same tenant
    assert second["webhook_secret"] is None  # the tenant existed: its secret is kept
    url = f"{pipeline.status_url}/api/v1/requests/{uuid.uuid4()}"
    assert httpx.get(url, headers=bearer(made["key"])).status_code == 404  # a valid key

    listed = keys_cli(pipeline.env, "--json", "list", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)["keys"]
    assert {k["key_id"] for k in keys} == {made["key_id"], second["key_id"]}
    assert made["key"] not in listed.stdout and "sha256" not in listed.stdout
    assert all(k["revoked_at"] == "" for k in keys)

    revoked = keys_cli(pipeline.env, "revoke", made["key_id"])
    assert revoked.returncode == 0 and made["key_id"] in revoked.stdout
    assert keys_cli(pipeline.env, "revoke", made["key_id"]).returncode == 1  # not live any more
    deadline = time.monotonic() + 30  # a checked key is trusted a few seconds
    while (got := httpx.get(url, headers=bearer(made["key"]))).status_code != 401:
        assert got.status_code == 404 and time.monotonic() < deadline, got.text
        time.sleep(0.5)
    assert httpx.get(url, headers=bearer(second["key"])).status_code == 404  # still live
    listed = json.loads(keys_cli(pipeline.env, "--json", "list", "--tenant", tenant).stdout)
    assert [k["key_id"] for k in listed["keys"] if k["revoked_at"]] == [made["key_id"]]


def test_the_cli_refuses_a_bad_tenant_id_with_how_to_fix_it(pipeline: Pipeline) -> None:
    bad = keys_cli(pipeline.env, "create", "--tenant", "Not OK!")
    assert bad.returncode == 2 and "lower-case letters" in bad.stderr

