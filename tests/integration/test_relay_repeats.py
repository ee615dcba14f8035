"""Repeated URLs through the outbox, on the real MongoDB and Kafka APIs: the
upload stores the groups, the relay publishes one event per distinct URL (per
chunk of ``MAX_ALSO + 1`` positions) while ``published`` reaches every
position, resuming after a crash; the reconciler re-drives a group's leader
and gives up on exactly the missing positions."""

from __future__ import annotations

import io
from typing import Any

import pytest

import services.ingest.pages as pages_mod
from services.ingest.handlers import Deps, accept_upload
from services.ingest.reconciler import Reconciler
from services.ingest.relay import in_flight
from shared.errors import TransientError
from shared.events import MAX_ALSO, ImageDone, ImageRequested
from shared.mongo import Store, position_id
from shared.products import id_range
from tests.integration import test_ingest_outbox as outbox
from tests.integration.test_ingest_outbox import recorded, relay_all, relay_of, stall

pytestmark = pytest.mark.stack
deps = outbox.deps  # the fixture: real MongoDB and Kafka, a recording publisher
SAME = "https://img.example/same.jpg"
ROWS = 2500  # rows of SAME; every 250th row has a URL of its own, and row 7 two of SAME


def rows_csv(rows: int = ROWS) -> tuple[bytes, list[tuple[int, int, str]]]:
    """The CSV, and its (row, position, url) positions in order."""
    lines, positions = ["S. No.,Product Name,Input Image Urls"], []
    for row in range(rows):
        urls = [SAME] if row % 250 else [f"https://img.example/{row}.jpg", SAME]
        if row == 7:
            urls = [SAME, "https://img.example/seven.jpg", SAME]
        lines.append(f'{row + 1},P{row},"{", ".join(urls)}"')
        positions += [(row, k, url) for k, url in enumerate(urls)]
    return ("\n".join(lines) + "\n").encode(), positions


async def upload(deps: Deps, rows: int = ROWS) -> tuple[str, list[tuple[int, int, str]]]:
    body, positions = rows_csv(rows)
    accepted = await accept_upload(deps, io.BytesIO(body), tenant="t", filename="f.csv",
                                   webhook_url=None,
                                   idempotency_key=None)
    assert accepted.image_count == len(positions)
    return accepted.request_id, positions


def images(deps: Deps) -> list[ImageRequested]:
    return [e for e in recorded(deps) if isinstance(e, ImageRequested)]


def stood_for(events: list[Any]) -> list[tuple[int, int]]:
    """(row, position) of every position the events stand for, repeats kept."""
    return [(r, p) for e in events
            for r, p in [(e.row, e.position)] + [(a.row, a.position) for a in e.also]]


async def request(deps: Deps, rid: str) -> dict[str, Any]:
    doc = await deps.store.requests.find_one({"_id": rid})
    assert doc is not None
    return doc


async def test_one_event_per_distinct_url_and_chunk_while_every_position_is_published(
        deps: Deps) -> None:
    rid, positions = await upload(deps)
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=100))
    events = images(deps)
    same = [e for e in events if e.url == SAME]
    copies = sum(url == SAME for _, _, url in positions)
    assert len(same) == -(-copies // (MAX_ALSO + 1)) == 3  # 2,501 copies: chunks of 1,001
    assert [len(e.also) for e in same] == [MAX_ALSO, MAX_ALSO, copies - 2 * (MAX_ALSO + 1) - 1]
    assert len(events) == len(same) + 11  # plus one per distinct URL
    # every position stood for exactly once, each by an event of its own URL
    assert sorted(stood_for(events)) == sorted((r, p) for r, p, _ in positions)
    url_of = {(r, p): url for r, p, url in positions}
    assert all(url_of[(a.row, a.position)] == e.url and a.serial == a.row + 1
               for e in events for a in e.also)
    # a leader lists the positions after it, in file order
    assert all(stood_for([e]) == sorted(stood_for([e])) for e in same)
    doc = await request(deps, rid)
    assert doc["relay"]["published"] == len(positions) == doc["image_count"]
    assert doc["relay"]["covered"] == len(positions) - len(events)
    assert in_flight(doc) == len(events)  # events, not positions, use credit
    assert await deps.store.url_groups.count_documents({"_id": id_range(rid)}) == 3


async def test_covered_positions_use_no_credit(deps: Deps) -> None:
    """A window of 5 events passes 2,500 rows of one URL in one round (three
    events), and those rows hold back no other request's credit."""
    body = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f"{row},P{row},{SAME}\n" for row in range(1, 2501))
    big = (await accept_upload(deps, io.BytesIO(body.encode()), tenant="t", filename="f.csv",
                               webhook_url=None, idempotency_key=None)).request_id
    small = (await outbox.accept(deps, 3)).request_id  # 6 distinct URLs
    relay = relay_of(deps, relay_window=5, relay_batch=5, relay_max_in_flight=8)
    assert await relay.round() == 2500 + 5
    by_request: dict[str, int] = {}
    for e in images(deps):
        by_request[e.request_id] = by_request.get(e.request_id, 0) + 1
    # 3 events in flight for the big one leave 5 of the 8 for the small one
    assert by_request == {big: 3, small: 5}
    doc = await request(deps, big)
    assert doc["relay"]["published"] == 2500 and in_flight(doc) == 3


async def test_a_relay_that_crashed_resumes_and_every_position_is_stood_for(
        deps: Deps) -> None:
    rid, positions = await upload(deps)
    publisher = deps.publisher
    assert isinstance(publisher, outbox.RecordingPublisher)
    publisher.fail_after = 4  # dies after publishing a batch, before moving its cursor
    with pytest.raises(TransientError):
        await relay_all(relay_of(deps, relay_window=10_000, relay_batch=2))
    publisher.fail_after = None
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=2))
    assert set(stood_for(images(deps))) == {(r, p) for r, p, _ in positions}
    doc = await request(deps, rid)
    assert doc["relay"]["published"] == len(positions)
    assert doc["relay"]["covered"] == len(positions) - 14  # counted once, despite the crash


async def record_all_but(store: Store, rid: str, positions: list[tuple[int, int, str]],
                         lost: set[tuple[int, int]]) -> None:
    await store.images.insert_many([
        {"_id": position_id(rid, r + 1, p), "request_id": rid, "status": "succeeded"}
        for r, p, _ in positions if (r, p) not in lost])


async def test_the_reconciler_re_drives_the_leader_of_a_missing_covered_position(
        deps: Deps) -> None:
    rid, positions = await upload(deps)
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=1000))
    recorded(deps).clear()
    lost = {(3, 0), (5, 0), (1501, 0), (250, 0)}  # 2 of chunk 0, 1 of chunk 1, a distinct
    await record_all_but(deps.store, rid, positions, lost)
    await stall(deps, rid, deps.settings.reconcile_after_seconds + 1)
    reconciler = Reconciler(deps.settings, deps.store, deps.publisher)
    assert await reconciler.run_once() == 4
    again = images(deps)
    # SAME's chunks are led by (0, 1) (rows 0-999 with row 7's second copy),
    # (1000, 1) (rows 1000-2000) and (2001, 0)
    assert sorted((e.row, e.position, e.url) for e in again) == [
        (0, 1, SAME), (250, 0, "https://img.example/250.jpg"), (1000, 1, SAME)]
    assert lost <= set(stood_for(again))  # each leader with its whole group
    assert [len(e.also) for e in again if e.url == SAME] == [MAX_ALSO, MAX_ALSO]
    doc = await request(deps, rid)
    assert (doc["redrives"], doc["redriven"]) == (1, 4)


async def test_the_reconciler_gives_up_on_exactly_the_missing_positions(deps: Deps) -> None:
    rid, positions = await upload(deps, rows=300)
    await relay_all(relay_of(deps, relay_window=10_000, relay_batch=1000))
    recorded(deps).clear()
    lost = {(0, 1), (3, 0), (7, 2), (299, 0), (250, 0)}  # SAME's leader and three covered
    await record_all_but(deps.store, rid, positions, lost)
    reconciler = Reconciler(deps.settings.model_copy(update={"reconcile_max_attempts": 0}),
                            deps.store, deps.publisher)
    await stall(deps, rid, deps.settings.reconcile_after_seconds + 1)
    assert await reconciler.run_once() == 5
    failed = [e for e in recorded(deps) if isinstance(e, ImageDone)]
    assert sorted(stood_for(failed)) == sorted(lost)  # each exactly once
    assert {(e.status, e.error_code) for e in failed} == {("failed", "not_processed")}
    assert len(failed) == 2  # one for the four of SAME's group, one for row 250's own URL


async def test_a_failed_upload_leaves_no_groups(deps: Deps,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = pages_mod.insert_pages, []

    async def fail_on_the_third(store: Store, docs: list[dict[str, Any]]) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise TransientError("MongoDB went away", code="mongo_away")
        await real(store, docs)

    monkeypatch.setattr(pages_mod, "insert_pages", fail_on_the_third)
    deps.settings.parse_once_max_bytes = 0  # read twice: groups are stored batch by batch
    with pytest.raises(TransientError):
        await upload(deps)
    assert await deps.store.requests.count_documents({}) == 0
    assert await deps.store.product_pages.count_documents({}) == 0
    assert await deps.store.url_groups.count_documents({}) == 0
