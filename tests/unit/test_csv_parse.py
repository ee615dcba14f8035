"""Unit tests of the CSV parser and validator (no servers, no files)."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator

import pytest

from services.ingest.csv_cells import SerialRegistry, check_serial, check_url, split_urls
from services.ingest.csv_header import canonical_column, detect_delimiter, normalise_header
from services.ingest.csvparse import (
    NAME,
    SERIAL,
    URLS,
    CsvInvalidError,
    CsvLimits,
    ProductRow,
    iter_products,
    validate,
)

HEADER = "S. No.,Product Name,Input Image Urls\n"
LIMITS = CsvLimits()


def run(text: str | bytes, limits: CsvLimits = LIMITS) -> tuple[list[tuple[str, int]], int]:
    data = text.encode() if isinstance(text, str) else text
    report = validate(io.BytesIO(data), limits)
    return [(e.code, e.line) for e in report.errors], report.error_count


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("S. No.", SERIAL), ("S.No", SERIAL), ("SNo", SERIAL), ("s_no", SERIAL),
        ("Serial Number", SERIAL), ("Serial No", SERIAL), ("Sr. No.", SERIAL), ("#", SERIAL),
        ("Sl. No", SERIAL), ("Product Name", NAME), ("product_name", NAME), ("Name", NAME),
        ("PRODUCT-NAME", NAME), ("Input Image Urls", URLS), ("Input Image URLs", URLS),
        ("Image URLs", URLS), ("image_url", URLS), ("  Input  Image  Urls ", URLS),
        ("Output Image Urls", None), ("Price", None), ("", None),
    ],
)  # fmt: skip
def test_header_aliases(raw: str, canonical: str | None) -> None:
    assert canonical_column(raw) == canonical


def test_normalise_header() -> None:
    assert normalise_header(" S. No. ") == "sno"
    assert normalise_header("Input_Image-URLs") == "inputimageurls"


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [
        ("S. No.,Product Name,Input Image Urls\r\n", ","),
        ("S. No.\tProduct Name\tInput Image Urls\n", "\t"),
        ("S. No.;Product Name;Input Image Urls\n", ";"),
        ("S. No.;Product, Name;Input Image Urls\n", ";"),
        ("a,b,c\n", ","),
        ("a;b;c\n", ";"),
        ("abc\n", ","),
    ],
)
def test_detect_delimiter(line: str, delimiter: str) -> None:
    assert detect_delimiter(line) == delimiter


def test_better_alias_wins_over_worse() -> None:
    report = validate(io.BytesIO(b"Title,Product Name,SNo,Images\nx,Shirt,1,https://a.example/x\n"))
    assert report.ok
    assert [w.code for w in report.warnings] == ["extra_column"]
    assert report.warnings[0].column == "Title"
    row = next(iter_products(io.BytesIO(
        b"Title,Product Name,SNo,Images\nx,Shirt,1,https://a.example/x\n")))  # fmt: skip
    assert row.name == "Shirt"


@pytest.mark.parametrize(
    ("raw", "serial", "code"),
    [
        ("1", 1, None), ("1.", 1, None), (" 42 ", 42, None), ("007", 7, None),
        ("0", None, "serial_not_positive"), ("-3", None, "serial_not_positive"),
        ("1.5", None, "serial_not_integer"), ("1.0", None, "serial_not_integer"),
        ("+1", None, "serial_not_integer"), ("one", None, "serial_not_integer"),
        ("1..", None, "serial_not_integer"), ("", None, "serial_missing"),
        ("9" * 19, None, "serial_too_large"), ("9" * 18, int("9" * 18), None),
    ],
)  # fmt: skip
def test_check_serial(raw: str, serial: int | None, code: str | None) -> None:
    value, problem = check_serial(raw)
    assert value == serial
    assert (problem[0] if problem else None) == code


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://cdn.example.com/a.jpg", None),
        ("HTTP://CDN.EXAMPLE.COM/A.JPG", None),
        ("https://cdn.example.com:8443/a.jpg?x=1&y=2#frag", None),
        ("https://例え.jp/画像.jpg", None),
        ("http://[2001:db8::1]/a.png", None),
        ("https://cdn.example.com/a%2Cb.jpg", None),
        ("https://example.com", None),
        ("ftp://example.com/a.jpg", "url_scheme"),
        ("javascript:alert(1)", "url_scheme"),
        ("JAVASCRIPT:alert(1)", "url_scheme"),
        ("mailto:a@example.com", "url_scheme"),
        ("example.com/a.jpg", "url_scheme_missing"),
        ("example.com:8080/a.jpg", "url_scheme_missing"),
        ("http://", "url_host_missing"),
        ("http:/example.com/a", "url_host_missing"),
        ("https://user:pw@example.com/a.jpg", "url_credentials"),
        ("https://example.com/a b.jpg", "url_whitespace"),
        ("https://example.com/a\u00a0b.jpg", "url_whitespace"),
        ("https://example.com/a\x00b.jpg", "url_invalid_character"),
        ("https://example.com\\@evil.example/", "url_invalid_character"),
        ("https://exa<mple.com/", "url_host_invalid"),
        ("https://example.com:0/", "url_invalid"),
        ("https://example.com:x/", "url_invalid"),
        ("https://example.com/" + "a" * 2100, "url_too_long"),
    ],
)
def test_check_url(url: str, code: str | None) -> None:
    problem = check_url(url, LIMITS)
    assert (problem[0] if problem else None) == code
    if problem:
        assert problem[1]


def test_split_urls() -> None:
    assert split_urls(" a , b,,c \n d\r\ne ") == ["a", "b", "c", "d", "e"]
    assert split_urls("   ") == []
    assert split_urls(" a ") == ["a"]


def test_serial_registry_dense_and_sparse() -> None:
    registry = SerialRegistry(100)
    assert registry.first_line(5, 2) == 2
    assert registry.first_line(5_000, 3) == 3
    assert registry.first_line(5, 9) == 2
    assert registry.first_line(5_000, 10) == 3
    assert registry.first_line(99, 11) == 11


def test_all_errors_reported_at_once() -> None:
    text = HEADER + "0,,ftp://x\n1,ok,https://a.example/x\n1,ok,https://a.example/y\n"
    errors, count = run(text)
    assert errors == [("serial_not_positive", 2), ("name_missing", 2), ("url_scheme", 2),
                      ("serial_duplicate", 4)]  # fmt: skip
    assert count == 4


def test_error_fields() -> None:
    data = (HEADER + "1,Shirt,https://u:p@a.example/" + "x" * 300 + "\n").encode()
    report = validate(io.BytesIO(data))
    (issue,) = report.errors
    assert issue.column == URLS and issue.code == "url_credentials" and issue.line == 2
    assert issue.value is not None and len(issue.value) == 201 and issue.value.endswith("…")
    assert "user" in issue.message


def test_missing_column_message_names_what_was_found() -> None:
    report = validate(io.BytesIO(b"S. No.,Title X,Pics\n1,a,https://a.example/x\n"))
    codes = [(e.code, e.column) for e in report.errors]
    assert codes == [("missing_column", NAME), ("missing_column", URLS)]
    assert "'Title X'" in report.errors[0].message and "productname" in report.errors[0].message


def test_error_cap_keeps_true_count() -> None:
    text = HEADER + "".join(f"{i},,https://a.example/x\n" for i in range(1, 51))
    report = validate(io.BytesIO(text.encode()), CsvLimits(max_errors=5))
    assert len(report.errors) == 5 and report.error_count == 50
    assert report.as_dict()["ok"] is False


def test_decode_error_line_with_tiny_chunks() -> None:
    body = "".join(f"{i},a,https://a.example/x\n" for i in range(1, 6))
    data = (HEADER + body).encode() + b"6,caf\xe9,https://a.example/x\n"
    for chunk in (4, 5, 7, 64, 65536):
        report = validate(io.BytesIO(data), chunk_size=chunk)
        assert [(e.code, e.line) for e in report.errors] == [("encoding_invalid", 7)], chunk
        assert "0xE9" in report.errors[0].message and "UTF-8" in report.errors[0].message


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    data = HEADER.replace("\n", "\r\n") + "1,a,https://a.example/x\r\n\r\n2,b,https://a.example/y"
    for chunk in range(4, 40):
        report = validate(io.BytesIO(data.encode()), chunk_size=chunk)
        assert report.ok and report.product_count == 2
        rows = list(iter_products(io.BytesIO(data.encode()), chunk_size=chunk))
        assert [r.line for r in rows] == [2, 4]


def test_iter_products_raises_on_invalid_file() -> None:
    data = (HEADER + "1,a,https://a.example/x\n2,,https://a.example/y\n").encode()
    rows: list[ProductRow] = []
    with pytest.raises(CsvInvalidError) as caught:
        rows.extend(iter_products(io.BytesIO(data)))
    assert [r.serial for r in rows] == [1]
    assert caught.value.code == "name_missing" and caught.value.issue.line == 3


def test_line_too_long_is_bounded() -> None:
    data = HEADER.encode() + b"1,a," + b"x" * 5000
    errors, _ = run(data, CsvLimits(max_line_chars=1000))
    assert errors == [("line_too_long", 2)]


class GeneratedCsv(io.RawIOBase):
    """A readable stream producing a large CSV on the fly; records read sizes."""

    def __init__(self, rows: int) -> None:
        self._parts = self._generate(rows)
        self._buffer = b""
        self.max_read = 0

    @staticmethod
    def _generate(rows: int) -> Iterator[bytes]:
        yield HEADER.encode()
        for i in range(1, rows + 1):
            yield (f'{i},Product {i},"https://cdn.example.com/{i}/a.jpg, '
                   f'https://cdn.example.com/{i}/b.jpg"\n').encode()  # fmt: skip

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        self.max_read = max(self.max_read, len(target))
        while len(self._buffer) < len(target):
            part = next(self._parts, None)
            if part is None:
                break
            self._buffer += part
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def test_validate_streams_with_bounded_memory() -> None:
    small, large = GeneratedCsv(2_000), GeneratedCsv(40_000)
    peaks = []
    for stream in (small, large):
        tracemalloc.start()
        report = validate(stream)  # type: ignore[arg-type]
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.ok
        assert stream.max_read <= 64 * 1024
    assert report.product_count == 40_000 and report.image_count == 80_000
    # 20x the rows: memory grows only by the serial registry (4 bytes per serial)
    # and the URLs' fingerprints (8 bytes per URL: services/ingest/repeats.py).
    assert peaks[1] < peaks[0] + 1_000_000, peaks


def test_validation_keeps_the_rows_of_a_small_valid_file_only() -> None:
    body = ("S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{i},P{i},"https://img.example/{i}/a.jpg, https://img.example/{i}/b.jpg"\n'
        for i in range(1, 11))).encode()
    streamed = list(iter_products(io.BytesIO(body)))
    assert validate(io.BytesIO(body), keep_rows=10).rows == streamed
    assert validate(io.BytesIO(body), keep_rows=9).rows is None  # too many to keep
    assert validate(io.BytesIO(body)).rows is None  # keeping is opt-in
    bad = body.replace(b"https://img.example/5/a.jpg", b"ftp://img.example/5/a.jpg")
    report = validate(io.BytesIO(bad), keep_rows=100)
    assert not report.ok and report.rows is None
    assert "rows" not in report.as_dict()
