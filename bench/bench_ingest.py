"""Ingest benchmark: upload CSVs of 1k, 10k and 100k rows (3 URLs each).

Prints, per size: seconds from upload start to the 202, rows/s, the ingest
process's peak RSS (sampled every 20 ms), and the median CPU seconds per upload
of the ingest process and of the MongoDB API server (SecantusDB, the
bottleneck here). Starts its own throwaway local stack
and an ingest service (no processors: only acceptance is measured).

    .venv/bin/python bench/bench_ingest.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import services
from deploy.localstack import LocalStack
from deploy.procs import free_port


def make_csv(rows: int) -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for i in range(1, rows + 1):
        urls = ", ".join(f"https://images.example.com/p{i}/{k}.jpg" for k in range(3))
        lines.append(f'{i},Product {i},"{urls}"')
    return ("\n".join(lines) + "\n").encode()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3, help="uploads per size (best, median)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp), s3_port=free_port(), kafka_port=free_port(),
                           mongo_port=free_port(), kafka_storage="memory")
        state = stack.up()
        ports = services.ServicePorts.free()
        env = {**state.env(), "IMGPIPE_TOPIC_PREFIX": "bench", "IMGPIPE_LOG_LEVEL": "WARNING",
               "IMGPIPE_MAX_UPLOAD_BYTES": str(1 << 30)}
        ingest = [s for s in services.plan(env, ports, processors=0) if s.name == "ingest"]
        running = services.start(ingest, log_dir=Path(tmp) / "logs")
        try:
            url = f"http://127.0.0.1:{ports.ingest}/api/v1/requests"
            pid = running.items[0].pid or 0
            ingest_proc, mongo_proc = psutil.Process(pid), psutil.Process(state.pids["mongo"])
            with httpx.Client(timeout=600) as client:
                client.post(url, files={"file": ("w.csv", make_csv(10), "text/csv")})  # warm
                sys.stdout.write(f"{'rows':>8} {'MB':>6} {'best (s)':>9} {'median (s)':>11} "
                                 f"{'rows/s':>9} {'peak RSS (MB)':>14} {'ingest CPU (s)':>15} "
                                 f"{'mongo CPU (s)':>14}\n")
                start_rss = psutil.Process(pid).memory_info().rss
                for rows in sizes:
                    body = make_csv(rows)
                    times, ingest_cpu, mongo_cpu = [], [], []
                    with PeakRss(pid) as rss:
                        for _ in range(args.repeat):
                            cpu0 = cpu_seconds(ingest_proc), cpu_seconds(mongo_proc)
                            start = time.perf_counter()
                            resp = client.post(url, files={"file": ("b.csv", body, "text/csv")})
                            times.append(time.perf_counter() - start)
                            ingest_cpu.append(cpu_seconds(ingest_proc) - cpu0[0])
                            mongo_cpu.append(cpu_seconds(mongo_proc) - cpu0[1])
                            assert resp.status_code == 202, resp.text[:500]
                    best, median = min(times), statistics.median(times)
                    sys.stdout.write(
                        f"{rows:>8} {len(body) / 1e6:>6.1f} {best:>9.2f} {median:>11.2f} "
                        f"{rows / best:>9.0f} {rss.peak / 1e6:>14.1f} "
                        f"{statistics.median(ingest_cpu):>15.2f} "
                        f"{statistics.median(mongo_cpu):>14.2f}\n")
                    sys.stdout.flush()
                sys.stdout.write(f"ingest RSS before the first size: {start_rss / 1e6:.1f} MB\n")
        finally:
            running.stop()
            stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
