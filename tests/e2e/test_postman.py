"""Run the Postman collection (docs/postman/) with newman against the real pipeline.

newman is installed once with npm into ``.data/node`` (git-ignored) and reused.
The test is skipped only when Node.js or npm is not installed on the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import HttpServer, Pipeline
from tests.imagecorpus import encode, photo

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "docs" / "postman" / "imgpipe.postman_collection.json"
NODE_DIR = ROOT / ".data" / "node"
NEWMAN = NODE_DIR / "node_modules" / ".bin" / "newman"
NEWMAN_SPEC = "newman@6"
MIN_ASSERTIONS = 25
IMAGES = ("sample1.jpg", "sample2.jpg", "sample3.jpg")


def newman() -> Path:
    """The local newman, installed with npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed to run the Postman collection with newman "
                    f"(node: {node or 'not found'}, npm: {npm or 'not found'}); install "
                    "Node.js 18+ to run this test")
    if not NEWMAN.exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
             "--loglevel=error", NEWMAN_SPEC],
            capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0 and NEWMAN.exists(), (
            f"`npm install {NEWMAN_SPEC}` into {NODE_DIR} failed:\n{done.stdout}\n{done.stderr}")
    return NEWMAN


def test_postman_collection_runs_green(pipeline: Pipeline, http_server: HttpServer,
                                       tmp_path: Path) -> None:
    binary = newman()
    for i, name in enumerate(IMAGES):
        http_server.files[name] = (encode(photo((400 + 16 * i, 300)), "JPEG", quality=85),
                                   "image/jpeg")
    report = tmp_path / "newman.json"
    base = http_server.url("").rstrip("/")
    cmd = [str(binary), "run", str(COLLECTION),
           "--env-var", f"api_key={pipeline.key}",
           "--env-var", f"ingest_url={pipeline.ingest_url}",
           "--env-var", f"status_url_base={pipeline.status_url}",
           "--env-var", f"image_base={base}",
           "--env-var", f"image_names={','.join(IMAGES)}",
           "--env-var", f"webhook_url={http_server.url('hook')}",
           "--env-var", "poll_interval_ms=500", "--env-var", "poll_max=180",
           "--timeout-request", "30000", "--color", "off",
           "--reporters", "cli,json", "--reporter-json-export", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=ROOT,
                          check=False)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, output
    stats = json.loads(report.read_text())["run"]["stats"]
    assert stats["assertions"]["failed"] == 0, output
    assert stats["assertions"]["total"] >= MIN_ASSERTIONS, stats
    assert stats["requests"]["failed"] == 0, stats

    # The images were fetched (the repeated URL only once) and the webhook arrived.
    assert all(http_server.hits.get(name) == 1 for name in IMAGES), http_server.hits
    deadline = time.monotonic() + 30
    while not http_server.received and time.monotonic() < deadline:
        time.sleep(0.2)
    [hook] = http_server.received
    assert hook["path"] == "/hook"
    assert hook["json"]["status"] == "COMPLETED"
    assert hook["headers"]["Idempotency-Key"] == hook["json"]["notification_id"]
