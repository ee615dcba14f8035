"""Outbox, backpressure and fairness benchmark (issue 12's figures).

Starts a throwaway local stack and every service (default broker), serves
generated JPEGs from a local HTTP server, then measures and prints:

- ``burst``: ``--uploads`` concurrent uploads of ``--rows`` rows, each client
  retrying a ``503`` after its ``Retry-After`` as a well-behaved client does:
  refusals, upload latency to the ``202`` (first attempt to acceptance)
  p50/p99, completion time p50/max;
- ``fairness``: a ``--small``-image request sent once a ``--big``-image request
  is processing: seconds until the small one is finished, and how far the big
  one was then;
- ``ack``: seconds to the ``202`` for one upload of ``--ack-rows`` rows (3 runs,
  last: what they queue is not measured).

    .venv/bin/python bench/bench_outbox.py [--scenarios burst,fairness,ack]
        [--uploads 50] [--rows 1000] [--big 30000] [--small 10] [--ack-rows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import TERMINAL, jpeg, serve_images

from deploy import services
from deploy.localstack import LocalStack
from deploy.procs import free_port


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Bench:
    def __init__(self, ingest: str, status: str, image_port: int) -> None:
        self.ingest, self.status, self.image_port = ingest, status, image_port
        self.client = httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=80))
        self.refused = 0

    def csv(self, rows: int) -> str:
        tag = uuid.uuid4().hex[:8]
        return "S. No.,Product Name,Input Image Urls\n" + "".join(
            f"{i},P{i},http://127.0.0.1:{self.image_port}/{tag}/{i}.jpg\n"
            for i in range(1, rows + 1))

    async def upload(self, body: str) -> tuple[float, str]:
        """(seconds from the first attempt to the 202, request id)."""
        t0 = time.perf_counter()
        while True:
            resp = await self.client.post(f"{self.ingest}/api/v1/requests",
                                          files={"file": ("b.csv", body, "text/csv")})
            if resp.status_code == 202:
                return time.perf_counter() - t0, resp.json()["request_id"]
            if resp.status_code not in (429, 503):
                raise SystemExit(f"upload failed: {resp.status_code} {resp.text[:300]}")
            self.refused += 1
            await asyncio.sleep(float(resp.headers.get("retry-after", "1")))

    async def state(self, rid: str) -> dict[str, object]:
        st: dict[str, object] = (await self.client.get(
            f"{self.status}/api/v1/requests/{rid}")).json()
        return st

    async def finished_at(self, rids: list[str], start: float) -> list[float]:
        done: dict[str, float] = {}
        while len(done) < len(rids):
            for rid in rids:
                if rid not in done and (await self.state(rid))["status"] in TERMINAL:
                    done[rid] = time.perf_counter() - start
            await asyncio.sleep(0.2)
        return list(done.values())

    async def ack(self, rows: int) -> None:
        body = self.csv(rows)
        runs = [(await self.upload(body))[0] for _ in range(3)]
        out(f"ack: {rows} rows -> 202 in median {statistics.median(runs):.2f} s "
              f"(runs {', '.join(f'{r:.2f}' for r in runs)})")

    async def burst(self, uploads: int, rows: int) -> None:
        self.refused = 0
        start = time.perf_counter()
        answered = await asyncio.gather(*(self.upload(self.csv(rows)) for _ in range(uploads)))
        completions = await self.finished_at([rid for _, rid in answered], start)
        lat = sorted(seconds for seconds, _ in answered)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        seconds = time.perf_counter() - start
        out(f"burst: {uploads} x {rows} rows: {self.refused} refusals (503/429, retried); "
              f"202 p50 {statistics.median(lat):.2f} s p99 {p99:.2f} s; completion p50 "
              f"{statistics.median(completions):.1f} s max {max(completions):.1f} s; "
              f"{uploads * rows / seconds:.0f} images/s")

    async def fairness(self, big: int, small: int) -> None:
        _, big_id = await self.upload(self.csv(big))
        while True:  # until the big one is well under way
            if int(str((await self.state(big_id))["succeeded"])) >= min(500, big // 10):
                break
            await asyncio.sleep(0.2)
        start = time.perf_counter()
        _, small_id = await self.upload(self.csv(small))
        [took] = await self.finished_at([small_id], start)
        then = await self.state(big_id)
        out(f"fairness: {small} images sent while {big} were processing: finished in "
              f"{took:.1f} s (the big one at {then['succeeded']}/{big}, {then['status']})")
        [big_took] = await self.finished_at([big_id], start)
        out(f"fairness: the big one finished {big_took:.0f} s after the small one was sent")


async def scenarios(bench: Bench, args: argparse.Namespace) -> None:
    try:
        for name in args.scenarios.split(","):
            if name == "ack":
                await bench.ack(args.ack_rows)
            elif name == "burst":
                await bench.burst(args.uploads, args.rows)
            elif name == "fairness":
                await bench.fairness(args.big, args.small)
            else:
                raise SystemExit(f"unknown scenario {name!r}")
    finally:
        await bench.client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="burst,fairness,ack")
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--big", type=int, default=30_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--ack-rows", type=int, default=10_000)
    parser.add_argument("--processors", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    httpd, port = serve_images([jpeg((160, 120), i) for i in range(32)])
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp), s3_port=free_port(), kafka_port=free_port(),
                           mongo_port=free_port(), kafka_storage="s3")
        state = stack.up()
        ports = services.ServicePorts.free()
        env = {**state.env(), "IMGPIPE_TOPIC_PREFIX": "bench", "IMGPIPE_LOG_LEVEL": "WARNING",
               "IMGPIPE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
        running = services.start(services.plan(env, ports, processors=args.processors),
                                 log_dir=Path(tmp) / "logs", timeout=240,
                                 wait_for_assignment=True)
        try:
            out(f"== bench_outbox on {state.broker}, {args.processors} processors ==")
            asyncio.run(scenarios(Bench(f"http://127.0.0.1:{ports.ingest}",
                                        f"http://127.0.0.1:{ports.status}", port), args))
        finally:
            running.stop()
            stack.down()
            httpd.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
