"""Schemathesis over both OpenAPI documents, with a valid key: no server
error, no status code, content type, header or body the document does not
describe. The status API is checked with generated ids and with a real
finished request (one failed image), so its 200 bodies are checked too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HttpServer, Pipeline
from tests.flows import upload, wait_finished
from tests.imagecorpus import encode, photo

pytestmark = [pytest.mark.stack, pytest.mark.slow]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")
ST = Path(sys.executable).with_name("st")


def schemathesis(pipeline: Pipeline, base: str, workdir: Path, config: str = "") -> None:
    cmd = [str(ST)]
    if config:
        (workdir / "schemathesis.toml").write_text(config)
        cmd += ["--config-file", str(workdir / "schemathesis.toml")]
    cmd += ["run", f"{base}/openapi.json", "--header", f"Authorization: Bearer {pipeline.key}",
            "--checks", CHECKS, "--max-examples", "40", "--no-color", "--warnings", "off",
            "--generation-database", "none", "--request-timeout", "30"]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600,
                          check=False)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "No issues found" in done.stdout, report


def test_both_openapi_documents_hold(pipeline: Pipeline, http_server: HttpServer,
                                     tmp_path: Path) -> None:
    http_server.files["st/a.jpg"] = (encode(photo((64, 48)), "JPEG", quality=85), "image/jpeg")
    body = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Lamp,"{http_server.url("st/a.jpg")},{http_server.url("st/missing.jpg")}"\n'
            f"2,Desk,{http_server.url('st/a.jpg')}\n")
    with pipeline.client(timeout=30) as client:
        accepted = upload(client, pipeline.ingest_url, body)
        status = wait_finished(client, accepted["status_url"], within=120)
    assert status["status"] == "COMPLETED_WITH_ERRORS", status

    schemathesis(pipeline, pipeline.ingest_url, tmp_path)
    schemathesis(pipeline, pipeline.status_url, tmp_path)  # generated ids: 404s
    schemathesis(pipeline, pipeline.status_url, tmp_path, config=(
        '[[operations]]\ninclude-path-regex = "request_id"\n'
        f'parameters = {{ "path.request_id" = "{accepted["request_id"]}" }}\n'))
