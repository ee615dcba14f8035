"""Benchmark of the compression engine (prints figures; not a test).

On the same generated images in the same run it measures:

* bare Pillow: ``Image.open`` + ``save`` at the engine's output quality with the
  same encoder settings (``optimize=True``, progressive kept), one process;
* the engine's ``compress`` in one process (target >= 0.95 x bare Pillow);
* ``EnginePool`` on all cores (target >= 1.8 x the single process on 2 cores);
* the peak RSS of each pool worker (``VmHWM`` from /proc, and psutil samples).

Usage: ``.venv/bin/python bench/bench_engine.py [--images N] [--rounds R] [--mp M]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.processor.engine import EnginePool, compress  # noqa: E402
from tests import imagecorpus as corpus  # noqa: E402


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_images(count: int, megapixels: float) -> list[bytes]:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    base = corpus.photo().resize((width, height), Image.Resampling.BILINEAR)
    images = []
    for i in range(count):
        grain = Image.merge("RGB", tuple(corpus.noise((width, height), 10 * i + c)
                                         for c in range(3)))
        img = Image.blend(base, grain, 0.12)
        images.append(corpus.encode(img, "JPEG", quality=95 - 3 * i, progressive=i % 2 == 1))
    return images


def bare_pillow(data: bytes, quality: int) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        params: dict[str, object] = {"quality": quality, "optimize": True}
        if img.info.get("progressive"):
            params["progressive"] = True
        img.save(buf, "JPEG", **params)
        return buf.getvalue()


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run_pool(
    images: list[bytes], workers: int, rounds: int
) -> tuple[float, dict[int, float]]:
    pool = EnginePool(workers=workers)
    peaks: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in pool.worker_pids():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                peaks[pid] = max(peaks.get(pid, 0.0), rss)
            stop.wait(0.01)

    try:
        await asyncio.gather(*(pool.compress(d) for d in images[:workers]))  # warm up
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await asyncio.gather(*(pool.compress(d) for d in images))
            times.append(time.perf_counter() - start)
        stop.set()
        sampler.join()
        hwm = {pid: vm_hwm_mb(pid) for pid in pool.worker_pids()}
    finally:
        await pool.close()
    merged = {pid: max(peaks.get(pid, 0.0), hwm.get(pid) or 0.0) for pid in hwm}
    return min(times), merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mp", type=float, default=3.0, help="megapixels per image")
    parser.add_argument("--memory-mp", type=float, default=12.0)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1

    images = make_images(args.images, args.mp)
    mp_total = sum(Image.open(io.BytesIO(d)).size[0] * Image.open(io.BytesIO(d)).size[1]
                   for d in images) / 1e6
    qualities = [compress(d).quality_out for d in images]
    out(f"{len(images)} JPEGs of {args.mp:g} MP ({mp_total:.1f} MP, "
        f"{sum(map(len, images)) / 2**20:.1f} MiB), {cores} cores, Pillow {Image.__version__}")

    bare_times: list[float] = []
    engine_times: list[float] = []
    pairs = list(zip(images, qualities, strict=True))
    for index in range(args.rounds):  # interleaved, alternating order: drift hits both alike
        runs = [(bare_times, lambda: [bare_pillow(d, q) for d, q in pairs]),
                (engine_times, lambda: [compress(d) for d in images])]
        for times, fn in runs if index % 2 == 0 else runs[::-1]:
            times.append(timed(fn))
    bare, engine = min(bare_times), min(engine_times)
    pool_time, _ = asyncio.run(run_pool(images, cores, args.rounds))

    def line(name: str, seconds: float) -> str:
        return (f"  {name:<30} {len(images) / seconds:6.2f} images/s  "
                f"{mp_total / seconds:6.1f} MP/s  ({seconds:.2f} s/round, best of {args.rounds})")

    out(line("bare Pillow open+save", bare))
    out(line("engine compress, 1 process", engine))
    out(line(f"EnginePool, {cores} workers", pool_time))
    out(f"  engine / bare Pillow          {bare / engine:.3f}  (target >= 0.95)")
    out(f"  pool / single process         {engine / pool_time:.3f}  (target >= 1.8 on 2 cores)")
    out(f"  medians: bare {statistics.median(bare_times):.2f}s, "
        f"engine {statistics.median(engine_times):.2f}s; load average {os.getloadavg()[0]:.2f}")

    big = make_images(max(cores * 2, 2), args.memory_mp)
    big_time, peaks = asyncio.run(run_pool(big, cores, 1))
    out(f"{len(big)} JPEGs of {args.memory_mp:g} MP through the pool: "
        f"{len(big) / big_time:.2f} images/s")
    for pid, peak in sorted(peaks.items()):
        out(f"  worker {pid}: peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
