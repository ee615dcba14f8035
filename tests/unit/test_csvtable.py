"""The CSV writer (shared/csvtable.py)."""

from __future__ import annotations

import codecs
import io

import pytest

from services.ingest.csvparse import iter_products, validate
from shared.csvtable import (
    OUTPUT_HEADER,
    OutputProduct,
    format_cell,
    neutralise,
    output_csv_rows,
    split_output_urls,
    write_table,
)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=SUM(A1)", "'=SUM(A1)"), ("+1", "'+1"), ("-1", "'-1"), ("@cmd", "'@cmd"),
        ("\tx", "'\tx"), ("\rx", "'\rx"), ("Shirt", "Shirt"), ("", ""), ("a=b", "a=b"),
        ("https://a.example/x", "https://a.example/x"), (" =x", " =x"),
    ],
)  # fmt: skip
def test_neutralise(cell: str, expected: str) -> None:
    assert neutralise(cell) == expected


@pytest.mark.parametrize(
    ("cell", "delimiter", "expected"),
    [
        ("plain", ",", "plain"), ("a,b", ",", '"a,b"'), ("a,b", ";", "a,b"),
        ("a;b", ";", '"a;b"'), ("a\tb", "\t", '"a\tb"'), ('say "hi"', ",", '"say ""hi"""'),
        ("two\nlines", ",", '"two\nlines"'), (" lead", ",", '" lead"'), ("trail ", ",", '"trail "'),
        ("", ",", ""),
    ],
)  # fmt: skip
def test_format_cell(cell: str, delimiter: str, expected: str) -> None:
    assert format_cell(cell, delimiter) == expected


def test_output_rows_keep_failed_positions() -> None:
    rows = list(output_csv_rows([
        (1, "Shirt", ["https://in/a", "https://in/b", "https://in/c"],
         ["https://out/a", None, "https://out/c"]),
        OutputProduct(2, "Hat", ["https://in/d"], [""]),
    ]))  # fmt: skip
    assert rows[0] == OUTPUT_HEADER
    assert rows[1] == ["1", "Shirt", "https://in/a, https://in/b, https://in/c",
                       "https://out/a, , https://out/c"]  # fmt: skip
    assert split_output_urls(rows[1][3]) == ["https://out/a", "", "https://out/c"]
    assert split_output_urls(rows[2][3]) == [""]
    for row in rows[1:]:
        assert len(split_output_urls(row[2])) == len(split_output_urls(row[3]))


def test_output_rows_reject_misaligned_lists() -> None:
    with pytest.raises(ValueError, match="serial 3"):
        list(output_csv_rows([(3, "x", ["https://a/b"], [])], header=False))


def test_write_table_text_and_binary() -> None:
    rows = [["a", "=1+1"], ["b,c", 'd"e']]
    text = io.StringIO()
    assert write_table(rows, text) == 2
    assert text.getvalue() == 'a,\'=1+1\r\n"b,c","d""e"\r\n'
    raw = io.BytesIO()
    write_table(rows, raw, encoding="utf-16", neutralise_cells=False, line_ending="\n")
    data = raw.getvalue()
    assert data.startswith(codecs.BOM_UTF16) and data.count(codecs.BOM_UTF16) == 1
    assert data.decode("utf-16") == 'a,=1+1\n"b,c","d""e"\n'


def test_write_table_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        write_table([["a"]], io.StringIO(), delimiter="|")
    with pytest.raises(ValueError):
        write_table([["a"]], io.StringIO(), line_ending="\n\r")


def test_output_csv_parses_back_with_extra_column_warning() -> None:
    out = io.BytesIO()
    write_table(output_csv_rows([(1, "=Shirt", ["https://in.example/a"], [None])]), out)
    out.seek(0)
    report = validate(out)
    assert report.ok and [w.code for w in report.warnings] == ["extra_column"]
    out.seek(0)
    (row,) = iter_products(out)
    assert row.name == "'=Shirt" and row.urls == ["https://in.example/a"]
