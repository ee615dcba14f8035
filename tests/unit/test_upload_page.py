"""The upload page's status polling, run in Node with a stubbed DOM and fetch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PAGE = Path(__file__).resolve().parents[2] / "services" / "ingest" / "page.html"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node")

HARNESS = """
let fakeNow = 0;
Date.now = () => fakeNow;
globalThis.setTimeout = (fn, ms) => { fakeNow += ms; Promise.resolve().then(fn); return 0; };
const elements = {};
globalThis.document = {getElementById: id => (elements[id] ??= {
  id, innerHTML: "", textContent: "", addEventListener() {}})};
let script = [];
globalThis.fetch = async url => {
  const [status, body] = script.shift() ?? [599, null];
  return {status, statusText: "status " + status,
          json: async () => { if (body === null) throw new Error("no json"); return body; }};
};
%SCRIPT%
(async () => {
  script = %RESPONSES%;
  let error = null;
  try { await poll("http://status/api/v1/requests/r1"); } catch (e) { error = String(e); }
  const box = document.getElementById("status");
  console.log(JSON.stringify({error, html: box.innerHTML, text: box.textContent,
                              left: script.length, elapsed: fakeNow, esc: esc("'<a>\\"")}));
})();
"""

RUNNING = {"status": "PROCESSING", "processed": 1, "image_count": 2, "succeeded": 1,
           "failed": 0, "failures": [], "output_csv_url": None}
DONE = {**RUNNING, "status": "COMPLETED", "processed": 2, "succeeded": 2}
CSV_LINK = "http://127.0.0.1:8001/api/v1/requests/r1/output.csv"  # the status API's


def run(responses: list[tuple[int, Any]]) -> dict[str, Any]:
    assert NODE is not None
    js = re.search(r"<script>(.*)</script>", PAGE.read_text(), re.S)
    assert js is not None
    source = HARNESS.replace("%SCRIPT%", js.group(1)).replace(
        "%RESPONSES%", json.dumps(responses))
    out = subprocess.run([NODE, "-"], input=source, capture_output=True, text=True,
                         timeout=30, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_404_shows_the_error_and_stops() -> None:
    r = run([(404, {"detail": {"code": "request_not_found", "message": "no request 'r1'"}}),
             (200, DONE)])
    assert r["error"] is None
    assert "404" in r["html"] and "no request &#39;r1&#39;" in r["html"]
    assert "stopped" in r["html"] and r["left"] == 1  # no further polling


def test_a_5xx_keeps_polling_until_the_csv_is_there() -> None:
    r = run([(200, RUNNING), (503, None), (500, {"detail": "boom"}),
             (200, {**DONE, "output_csv_url": CSV_LINK}), (200, DONE)])
    assert r["error"] is None and r["left"] == 1
    assert "Download the output CSV" in r["html"]


def test_a_finished_request_without_a_csv_stops_after_a_while() -> None:
    r = run([(200, DONE)] * 100)
    assert r["error"] is None
    assert "not ready" in r["html"]
    assert 30_000 <= r["elapsed"] <= 40_000 and r["left"] > 0


def test_esc_escapes_single_quotes() -> None:
    assert run([(404, {})])["esc"] == "&#39;&lt;a&gt;&quot;"
