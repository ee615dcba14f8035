"""Property: any product table our writer produces parses back identically."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.csvparse import iter_products, validate
from shared.csvtable import OUTPUT_HEADER, neutralise, write_table

NAME_CHARS = st.characters(
    exclude_categories=("Cs", "Cc", "Zl", "Zp"), include_characters="\t\",;'=+-@ "
)
names = st.text(NAME_CHARS, min_size=1, max_size=60).filter(lambda s: s == s.strip())
hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True)
path_chars = st.sampled_from([*"abcXYZ019-._~!$&'()*+;=:@%/?#\"", "é", "画"])
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    st.sampled_from(["", ":8080", ":443"]),
    st.text(path_chars, max_size=40),
)
url_separators = st.sampled_from([",", ", ", " ,", "\n", ",\r\n", " , \n "])


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[int, str, list[str]]]:
    serials = draw(st.lists(st.integers(1, 10**18 - 1), min_size=1, max_size=12, unique=True))
    return [(s, draw(names), draw(st.lists(urls, min_size=1, max_size=5))) for s in serials]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tables(),
    delimiter=st.sampled_from([",", "\t", ";"]),
    line_ending=st.sampled_from(["\r\n", "\n", "\r"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
    separator=url_separators,
    dotted=st.booleans(),
    neutralise_cells=st.booleans(),
    output_column=st.booleans(),
    chunk_size=st.sampled_from([4, 7, 64, 65536]),
)
def test_written_tables_parse_back(
    table: list[tuple[int, str, list[str]]],
    delimiter: str,
    line_ending: str,
    encoding: str,
    separator: str,
    dotted: bool,
    neutralise_cells: bool,
    output_column: bool,
    chunk_size: int,
) -> None:
    header = OUTPUT_HEADER if output_column else OUTPUT_HEADER[:3]
    rows: list[list[str]] = [list(header)]
    for serial, name, row_urls in table:
        row = [f"{serial}." if dotted else str(serial), name, separator.join(row_urls)]
        rows.append([*row, "x"] if output_column else row)
    out = io.BytesIO()
    write_table(rows, out, delimiter=delimiter, line_ending=line_ending, encoding=encoding,
                neutralise_cells=neutralise_cells)  # fmt: skip

    out.seek(0)
    report = validate(out, chunk_size=chunk_size)
    assert report.errors == []
    assert report.ok and report.delimiter == delimiter
    assert report.product_count == len(table)
    assert report.image_count == sum(len(u) for _, _, u in table)
    assert len(report.warnings) == (1 if output_column else 0) + sum(
        len(set(u)) < len(u) for _, _, u in table
    )
    out.seek(0)
    parsed = [(r.serial, r.name, r.urls) for r in iter_products(out, chunk_size=chunk_size)]
    expected_names = [neutralise(n) if neutralise_cells else n for _, n, _ in table]
    assert parsed == [(s, n, u) for (s, _, u), n in zip(table, expected_names, strict=True)]
