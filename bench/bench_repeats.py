"""Repeated URLs end to end: 1 row against N rows (default 10,000) of one URL.

Starts a throwaway local stack and every service (as bench_pipeline.py does),
serves one generated JPEG, and for each size uploads a CSV whose rows all name
the same URL (a fresh URL per run), then times the upload's ``202``, the
request finishing (every position counted) and the output CSV being stored.
Prints the medians over ``--runs`` runs, the ratio N rows / 1 row, and how
often the image server was asked for each run's URL (1 is the goal: one fetch
per distinct URL).

    .venv/bin/python bench/bench_repeats.py [--rows 10000] [--runs 3] [--broker kafka]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import services
from deploy.localstack import LocalStack
from deploy.procs import free_port
from tests.imagecorpus import encode, photo

TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"}


def serve(body: bytes, hits: Counter[str]) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            hits[self.path] += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, port


def one_request(client: httpx.Client, ingest: str, status: str, url: str,
                rows: int) -> tuple[float, float, float]:
    """(to the 202, to finished, to the output CSV) in seconds."""
    body = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f"{i},P{i},{url}\n" for i in range(1, rows + 1))
    t0 = time.perf_counter()
    resp = client.post(f"{ingest}/api/v1/requests", files={"file": ("r.csv", body, "text/csv")})
    if resp.status_code != 202:
        raise SystemExit(f"upload refused: {resp.status_code} {resp.text[:300]}")
    accepted, rid = time.perf_counter() - t0, resp.json()["request_id"]
    finished = None
    deadline = t0 + 600
    while time.perf_counter() < deadline:
        st = client.get(f"{status}/api/v1/requests/{rid}").json()
        if finished is None and st["status"] in TERMINAL:
            if (st["succeeded"], st["failed"]) != (rows, 0):
                raise SystemExit(f"unexpected counts: {st}")
            finished = time.perf_counter() - t0
        if finished is not None and st.get("output_csv_url"):
            return accepted, finished, time.perf_counter() - t0
        # fine-grained at first (a 1-row request takes ~0.2 s), then light, so
        # the polling itself does not load the MongoDB API server
        time.sleep(0.02 if time.perf_counter() - t0 < 1 else 0.25)
    raise SystemExit(f"request {rid} did not finish within 600 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--broker", default="kafka")
    parser.add_argument("--processors", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hits: Counter[str] = Counter()
    httpd, image_port = serve(encode(photo((640, 480)), "JPEG", quality=90), hits)
    out = sys.stdout
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stack = LocalStack(Path(tmp), s3_port=free_port(), kafka_port=free_port(),
                               mongo_port=free_port(), kafka_storage="s3", broker=args.broker)
            state = stack.up()
            ports = services.ServicePorts.free()
            env = {**state.env(), "IMGPIPE_TOPIC_PREFIX": "bench",
                   "IMGPIPE_LOG_LEVEL": "WARNING", "IMGPIPE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
            running = services.start(services.plan(env, ports, processors=args.processors),
                                     log_dir=Path(tmp) / "logs", timeout=240,
                                     wait_for_assignment=True)
            try:
                ingest = f"http://127.0.0.1:{ports.ingest}"
                status = f"http://127.0.0.1:{ports.status}"
                results: dict[int, list[tuple[float, float, float]]] = {1: [], args.rows: []}
                fetches: dict[int, list[int]] = {1: [], args.rows: []}
                with httpx.Client(timeout=600) as client:
                    one_request(client, ingest, status,
                                f"http://127.0.0.1:{image_port}/warm.jpg", 4)  # warm-up
                    for _ in range(args.runs):
                        for rows in results:  # interleaved: drift hits both alike
                            path = f"/{uuid.uuid4().hex[:8]}/same.jpg"
                            url = f"http://127.0.0.1:{image_port}{path}"
                            results[rows].append(one_request(client, ingest, status, url,
                                                             rows))
                            fetches[rows].append(hits[path])
            finally:
                running.stop()
                stack.down()
    finally:
        httpd.shutdown()
    out.write(f"\n== {args.broker}: one URL, 1 row vs {args.rows:,} rows, "
              f"median of {args.runs} runs, {args.processors} processors ==\n")
    out.write(f"{'rows':>8} {'202 (s)':>9} {'finished (s)':>13} {'output CSV (s)':>15} "
              f"{'GETs':>6}\n")
    med: dict[int, tuple[float, ...]] = {}
    for rows, runs in results.items():
        med[rows] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
        out.write(f"{rows:>8,} {med[rows][0]:>9.2f} {med[rows][1]:>13.2f} "
                  f"{med[rows][2]:>15.2f} {max(fetches[rows]):>6}\n")
    one, many = med[1], med[args.rows]
    out.write(f"ratio {args.rows:,} rows / 1 row: finished {many[1] / one[1]:.1f}x, "
              f"output CSV {many[2] / one[2]:.1f}x\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
