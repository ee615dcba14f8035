"""The malformed (and well-formed) CSV corpus in tests/data/csv, driven by expected.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.ingest.csvparse import CsvInvalidError, CsvLimits, iter_products, validate

DATA = Path(__file__).resolve().parents[1] / "data" / "csv"
MANIFEST: dict[str, dict[str, Any]] = json.loads((DATA / "expected.json").read_text("utf-8"))
CODE_FIELDS = {"products": "product_count", "images": "image_count", "encoding": "encoding",
               "delimiter": "delimiter", "error_count": "error_count"}  # fmt: skip


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in DATA.iterdir() if p.name != "expected.json"}
    assert on_disk == set(MANIFEST)
    assert len(MANIFEST) >= 30
    assert sum(not e["ok"] for e in MANIFEST.values()) >= 30


@pytest.mark.parametrize("chunk_size", [65536, 3])
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_file(name: str, chunk_size: int) -> None:
    expected = MANIFEST[name]
    limits = CsvLimits(**expected.get("limits", {}))
    with (DATA / name).open("rb") as stream:
        report = validate(stream, limits, chunk_size=chunk_size)
    assert [[i.code, i.line] for i in report.errors] == expected["errors"]
    assert [[i.code, i.line] for i in report.warnings] == expected["warnings"]
    assert report.ok is expected["ok"]
    for key, attribute in CODE_FIELDS.items():
        if key in expected:
            assert getattr(report, attribute) == expected[key], key
    if "error_count" not in expected:
        assert report.error_count == len(report.errors)
    for issue in report.errors + report.warnings:
        assert issue.message and issue.message[0].isupper()
        assert issue.code.islower() and " " not in issue.code
        assert issue.value is None or len(issue.value) <= 201
        assert issue.line >= 1


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["ok"]))
def test_ok_files_iterate(name: str) -> None:
    expected = MANIFEST[name]
    with (DATA / name).open("rb") as stream:
        report = validate(stream)
        stream.seek(0)
        rows = list(iter_products(stream))
    assert len(rows) == report.product_count == expected["products"]
    assert sum(len(r.urls) for r in rows) == expected["images"]
    assert [r.line for r in rows] == sorted(r.line for r in rows)
    for row in rows:
        assert row.serial > 0 and row.name == row.name.strip() and row.name
        assert all(u.startswith(("http://", "https://")) for u in row.urls)


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if not e["ok"]))
def test_bad_files_refuse_to_iterate(name: str) -> None:
    limits = CsvLimits(**MANIFEST[name].get("limits", {}))
    with (DATA / name).open("rb") as stream, pytest.raises(CsvInvalidError) as caught:
        list(iter_products(stream, limits))
    assert caught.value.code == MANIFEST[name]["errors"][0][0]
