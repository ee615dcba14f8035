"""Repeated URLs within a request (services/ingest/repeats.py), without servers:
pass 1 finds them, pass 2 marks the rows and builds one group per event."""

from __future__ import annotations

import io
from json.encoder import encode_basestring
from typing import Any

import bson

from services.ingest.csvparse import ProductRow, validate
from services.ingest.pages import _prepare
from services.ingest.repeats import (
    Grouper,
    RepeatFinder,
    covered_positions,
    fingerprint,
    group_id,
    leader_of,
)
from shared.events import MAX_ALSO, MAX_ALSO_NAME_BYTES
from shared.products import PageBuilder


def test_the_finder_reports_exactly_the_urls_seen_more_than_once() -> None:
    finder = RepeatFinder()
    distinct = [f"https://img.example/{i}.jpg" for i in range(50_000)]
    for k in range(0, len(distinct), 3):
        finder.add(distinct[k:k + 3])
    finder.add(["https://img.example/7.jpg", "https://img.example/x.jpg"])
    finder.add(["https://img.example/x.jpg", "https://img.example/x.jpg"])
    assert finder.repeated() == {fingerprint("https://img.example/7.jpg"),
                                 fingerprint("https://img.example/x.jpg")}


def test_no_repeats_no_candidates() -> None:
    finder = RepeatFinder()
    finder.add([f"u{i}" for i in range(1000)])
    assert finder.repeated() == set()


def rows_of(urls_per_row: list[list[str]]) -> list[ProductRow]:
    return [ProductRow(line=i + 2, serial=10 * (i + 1), name=f"P{i}", urls=urls)
            for i, urls in enumerate(urls_per_row)]


def annotate_all(rows: list[ProductRow], max_also: int = MAX_ALSO,
                 candidates: set[int] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[tuple[int, int], list[list[int]]]]:
    if candidates is None:
        finder = RepeatFinder()
        for r in rows:
            finder.add(r.urls)
        candidates = finder.repeated()
    grouper = Grouper("rid", candidates, max_also)
    marks, docs = [], []
    for i, r in enumerate(rows):
        fields, full = grouper.annotate(i, r.serial, r.name, r.urls)
        marks.append(fields)
        docs += full
    docs += grouper.finish()
    assert len({d["_id"] for d in docs}) == len(docs) == grouper.groups
    for d in docs:  # every covered position carries its row's name
        assert all(a[3] == rows[a[0]].name for a in d["also"])
    return marks, {(d["row"], d["position"]): [a[:3] for a in d["also"]] for d in docs}


def test_a_group_closes_before_its_names_pass_the_byte_budget() -> None:
    name = "é" * 5000  # 10,002 bytes of JSON: 29 fit the budget
    per_group = MAX_ALSO_NAME_BYTES // len(encode_basestring(name).encode())
    rows = [ProductRow(line=i + 2, serial=i + 1, name=name, urls=["https://o/same.jpg"])
            for i in range(2 * (per_group + 1) + 5)]
    _, groups = annotate_all(rows)
    assert per_group < MAX_ALSO
    assert [len(also) for _, also in sorted(groups.items())] == [per_group, per_group, 4]


def test_the_first_position_of_a_url_leads_and_lists_the_others_in_order() -> None:
    rows = rows_of([["a", "b"], ["c", "a"], ["a", "b", "a"]])
    marks, groups = annotate_all(rows)
    assert marks == [{"lead": [0, 1]}, {"cover": [[1, 0, 0]]},
                     {"cover": [[0, 0, 0], [1, 0, 1], [2, 0, 0]]}]
    # [row, serial, position] of every other position of the URL, in file order
    assert groups == {(0, 0): [[1, 20, 1], [2, 30, 0], [2, 30, 2]], (0, 1): [[2, 30, 1]]}


def test_a_url_with_more_copies_than_the_cap_gets_one_leader_per_chunk() -> None:
    rows = rows_of([["u"]] * 10)
    marks, groups = annotate_all(rows, max_also=3)
    # chunks of 4 positions: rows 0-3 (led by 0), 4-7 (by 4), 8-9 (by 8)
    assert [m.get("lead") for m in marks] == [[0], None, None, None, [0], None, None, None,
                                              [0], None]
    assert groups == {(0, 0): [[1, 20, 0], [2, 30, 0], [3, 40, 0]],
                      (4, 0): [[5, 60, 0], [6, 70, 0], [7, 80, 0]],
                      (8, 0): [[9, 100, 0]]}
    assert [leader_of(dict(m), 0) for m in marks] == [
        None, (0, 0), (0, 0), (0, 0), None, (4, 0), (4, 0), (4, 0), None, (8, 0)]
    # every position is either its own event or covered by exactly one
    covered = sum(len(also) for also in groups.values())
    assert covered + len(groups) == 10


def test_the_cap_keeps_an_event_far_below_kafkas_message_limit() -> None:
    from shared.events import ImageDone, PositionRef

    done = ImageDone(request_id="6b363f8a-a9db-414d-9ef6-88abf672b89a", image_id="x" * 36,
                     serial=10**17, row=199_999, position=49, url="https://x/" + "a" * 2040,
                     status="failed", error_code="http_404", error_message="e" * 1000,
                     also=[PositionRef(row=199_999, serial=10**17, position=49)] * MAX_ALSO)
    assert len(done.encode()) < 100_000  # Kafka's default limit is 1 MB


def test_a_fingerprint_collision_is_told_apart_by_the_url_itself() -> None:
    """Two different URLs with a candidate fingerprint (as a collision would
    make them): each leads its own group, and neither covers the other."""
    rows = rows_of([["a"], ["b"], ["a"]])
    marks, groups = annotate_all(rows, candidates={fingerprint("a"), fingerprint("b")})
    assert marks == [{"lead": [0]}, {"lead": [0]}, {"cover": [[0, 0, 0]]}]
    assert groups == {(0, 0): [[2, 30, 0]], (1, 0): []}


def test_rows_of_distinct_urls_get_no_marks_and_no_groups() -> None:
    marks, groups = annotate_all(rows_of([["a", "b"], ["c"]]))
    assert marks == [{}, {}] and groups == {}


def test_covered_positions_and_group_ids() -> None:
    row = {"input_urls": ["a", "b", "c"], "lead": [1], "cover": [[0, 4, 2], [2, 4, 2]]}
    assert covered_positions(row) == {0, 2} and covered_positions({"input_urls": []}) == set()
    assert leader_of(row, 2) == (4, 2) and leader_of(row, 1) is None
    assert group_id("rid", 4, 2) == "rid:000000004:2"
    assert group_id("rid", 4, 2).startswith("rid:")  # inside shared.products.id_range


def test_validation_reports_the_repeated_urls_of_a_valid_file_only() -> None:
    ok = ("S. No.,Product Name,Input Image Urls\n1,A,\"https://x/a.jpg, https://x/b.jpg\"\n"
          "2,B,https://x/a.jpg\n")
    report = validate(io.BytesIO(ok.encode()))
    assert report.ok and report.repeated == {fingerprint("https://x/a.jpg")}
    assert "repeated" not in report.as_dict()
    bad = ok + "x,C,https://x/a.jpg\n"
    assert validate(io.BytesIO(bad.encode())).repeated is None


def test_a_row_whose_positions_are_all_covered_stays_within_its_size_bound() -> None:
    """``max_row_bytes`` (which sizes the pages) includes room for the marks."""
    urls = [f"https://x/{k}.jpg" for k in range(50)]
    text = ("S. No.,Product Name,Input Image Urls\n"
            + "".join(f'{i},P,"{", ".join(urls)}"\n' for i in (1, 2 ** 40)))
    report = validate(io.BytesIO(text.encode()))
    assert report.ok and report.repeated is not None
    grouper = Grouper("rid", report.repeated)
    grouper.annotate(0, 1, "P", urls)
    marks, _ = grouper.annotate(2 ** 31, 2 ** 40, "P", urls)
    assert len(marks["cover"]) == 50
    row = {"serial": 2 ** 40, "name": "P", "line": 3, "input_urls": urls, **marks}
    assert len(bson.encode({"0": row})) <= report.max_row_bytes


def test_pass_two_stores_marked_rows_and_every_group_by_the_last_batch() -> None:
    rows = rows_of([["u", f"v{i}"] for i in range(7)])
    finder = RepeatFinder()
    for r in rows:
        finder.add(r.urls)
    pages, grouper = PageBuilder("rid", 3), Grouper("rid", finder.repeated(), max_also=4)
    it = iter(rows)
    batches = [_prepare(pages, grouper, it, 3) for _ in range(4)]
    docs = [d for pages_, _ in batches for d in pages_]
    groups = [g for _, gs in batches for g in gs]
    assert [len(d["rows"]) for d in docs] == [3, 3, 1]
    assert [r.get("lead") for d in docs for r in d["rows"]] == [[0], None, None, None, None,
                                                                [0], None]
    assert docs[0]["rows"][1]["cover"] == [[0, 0, 0]]
    assert [(g["_id"], g["serial"], g["url"], len(g["also"])) for g in groups] == [
        ("rid:000000000:0", 10, "u", 4), ("rid:000000005:0", 60, "u", 1)]
    assert batches[-1] == ([], [])
