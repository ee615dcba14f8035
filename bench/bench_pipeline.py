"""End-to-end pipeline benchmark, on each broker in one run.

For every broker asked for (Apache Kafka and Tansu by default) it starts a
throwaway local stack and every service, serves the same generated JPEGs from
a local HTTP server, uploads ``--uploads`` CSVs at once (``--rows`` rows, one
image each), waits until every request is finished and prints:

- end-to-end images/s (first upload sent to last request finished);
- upload latency (to the 202) p50/p99, and completion time p50/max;
- CPU seconds per image of every process role (from /proc before and after:
  services with their engine workers, the broker, the MongoDB and S3 servers).

    .venv/bin/python bench/bench_pipeline.py [--brokers kafka,tansu] [--uploads 10]
        [--rows 100] [--size 640x480] [--processors 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import services
from deploy.localstack import LocalStack
from deploy.procs import free_port

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "photos" / "grace_hopper.jpg"
TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"}


def jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A photo-like JPEG (the shared photo, else a gradient), slightly varied."""
    if PHOTO.is_file():
        img = Image.open(PHOTO).convert("RGB").resize(size)
    else:
        img = Image.linear_gradient("L").resize(size).convert("RGB")
    img = img.rotate(seed % 7, expand=False)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85 + seed % 10)
    return buf.getvalue()


def serve_images(images: list[bytes]) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            # /<anything>/<n>.jpg -> image n modulo the set
            n = int(self.path.rsplit("/", 1)[-1].split(".")[0]) % len(images)
            body = images[n]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, port


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def roles(stack_pids: dict[str, int], running: services.Services, broker: str
          ) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {broker: [stack_pids["kafka"]],
                                 "mongodb (SecantusDB)": [stack_pids["mongo"]],
                                 "s3 (SeaweedFS)": [stack_pids["s3"]]}
    for svc in running.items:
        role = "processor" if svc.name.startswith("processor") else svc.name
        out.setdefault(role, []).append(svc.pid or 0)
    return out


async def workload(ingest: str, status: str, image_port: int, uploads: int, rows: int
                   ) -> tuple[float, list[float], list[float]]:
    """(seconds, upload latencies, completion times) of one burst of uploads."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(
            max_connections=uploads + 4)) as client:

        async def one(k: int) -> tuple[float, str]:
            tag = uuid.uuid4().hex[:8]
            body = "S. No.,Product Name,Input Image Urls\n" + "".join(
                f"{i},P{i},http://127.0.0.1:{image_port}/{tag}/{k * rows + i}.jpg\n"
                for i in range(1, rows + 1))
            t0 = time.perf_counter()
            resp = await client.post(f"{ingest}/api/v1/requests",
                                     files={"file": ("b.csv", body, "text/csv")})
            if resp.status_code != 202:
                raise SystemExit(f"upload refused: {resp.status_code} {resp.text[:300]}")
            return time.perf_counter() - t0, resp.json()["request_id"]

        start = time.perf_counter()
        answered = await asyncio.gather(*(one(k) for k in range(uploads)))
        finished: dict[str, float] = {}
        while len(finished) < uploads:
            for _, rid in answered:
                if rid in finished:
                    continue
                st = (await client.get(f"{status}/api/v1/requests/{rid}")).json()
                if st["status"] in TERMINAL:
                    finished[rid] = time.perf_counter() - start
            await asyncio.sleep(0.2)
        return time.perf_counter() - start, [a for a, _ in answered], list(finished.values())


def run_one(broker: str, args: argparse.Namespace, image_port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp), s3_port=free_port(), kafka_port=free_port(),
                           mongo_port=free_port(), kafka_storage="s3", broker=broker)
        state = stack.up()
        ports = services.ServicePorts.free()
        env = {**state.env(), "IMGPIPE_TOPIC_PREFIX": "bench", "IMGPIPE_LOG_LEVEL": "WARNING",
               "IMGPIPE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
        running = services.start(services.plan(env, ports, processors=args.processors),
                                 log_dir=Path(tmp) / "logs", timeout=240,
                                 wait_for_assignment=True)
        try:
            ingest = f"http://127.0.0.1:{ports.ingest}"
            status = f"http://127.0.0.1:{ports.status}"
            asyncio.run(workload(ingest, status, image_port, 1, 4))  # warm-up
            groups = roles(state.pids, running, broker)
            before = {r: sum(tree_cpu(p) for p in pids) for r, pids in groups.items()}
            seconds, latencies, completions = asyncio.run(
                workload(ingest, status, image_port, args.uploads, args.rows))
            after = {r: sum(tree_cpu(p) for p in pids) for r, pids in groups.items()}
        finally:
            running.stop()
            stack.down()
    images = args.uploads * args.rows
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    out = sys.stdout
    out.write(f"\n== {broker}: {args.uploads} uploads x {args.rows} images "
              f"({args.size}), {args.processors} processors ==\n")
    out.write(f"end to end: {images / seconds:.1f} images/s ({seconds:.1f} s)\n")
    out.write(f"upload to 202: p50 {statistics.median(lat):.2f} s, p99 {p99:.2f} s; "
              f"completion: p50 {statistics.median(completions):.1f} s, "
              f"max {max(completions):.1f} s\n")
    out.write(f"{'process role':<22} {'CPU ms/image':>12}\n")
    total = 0.0
    for role in groups:
        ms = (after[role] - before[role]) * 1000 / images
        total += ms
        out.write(f"{role:<22} {ms:>12.1f}\n")
    out.write(f"{'all':<22} {total:>12.1f}\n")
    out.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="kafka,tansu")
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--size", default="640x480", help="image size WxH")
    parser.add_argument("--distinct", type=int, default=64, help="distinct images served")
    parser.add_argument("--processors", type=int, default=2)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    w, h = (int(x) for x in args.size.split("x"))
    images = [jpeg((w, h), i) for i in range(args.distinct)]
    httpd, port = serve_images(images)
    try:
        for broker in args.brokers.split(","):
            run_one(broker.strip(), args, port)
    finally:
        httpd.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
