"""Benchmark of the compression engine (prints figures; not a test).

On the same generated images in the same run it measures:

* bare Pillow: ``Image.open`` + ``save`` at the engine's output quality with the
  same encoder settings (``optimize=True``, progressive kept), one process;
* the engine's ``compress`` in one process (target >= 0.95 x bare Pillow);
* ``EnginePool`` on all cores (target >= 1.8 x the single process on 2 cores),
  with its workers' utilisation (their CPU time / (workers x wall time)) and
  how much CPU an image costs a worker next to one in a lone process;
* the machine ceiling: the bare Pillow loop in one process per core at once
  against one process alone; no pool can scale better on this machine;
* the peak RSS of each pool worker (``VmHWM`` from /proc).

Every round runs all four in a rotated order, so drift on the machine hits them
alike (bare Pillow and the engine run twice per round: once timed by the wall
clock, once by CPU time); figures are medians over the rounds.

Usage: ``.venv/bin/python bench/bench_engine.py [--images N] [--rounds R] [--mp M]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import sys
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


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # a worker replaced meanwhile (killed over a limit)
            continue
        total += times.user + times.system
    return total


class PoolRunner:
    """An EnginePool on its own event loop, timed one round at a time."""

    def __init__(self, workers: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool = EnginePool(workers=workers)
        self.worker_cpu: list[float] = []  # per round, summed over the workers

    def run(self, images: list[bytes]) -> None:
        async def batch() -> None:
            await asyncio.gather(*(self.pool.compress(d) for d in images))

        pids = self.pool.worker_pids()
        before = cpu_of(pids)
        self.loop.run_until_complete(batch())
        self.worker_cpu.append(cpu_of(pids) - before)

    def close(self) -> dict[int, float | None]:
        """Close the pool; the peak RSS (MiB) of each worker."""
        hwm = {pid: vm_hwm_mb(pid) for pid in self.pool.worker_pids()}
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()
        return hwm


def _bare_loop(pairs: list[tuple[bytes, int]]) -> None:
    for data, quality in pairs:
        bare_pillow(data, quality)


def bare_in_parallel(pairs: list[tuple[bytes, int]], procs: int) -> None:
    """The bare loop in ``procs`` independent processes at once (each does it all)."""
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_bare_loop, args=(pairs,)) for _ in range(procs)]
    for child in children:
        child.start()
    for child in children:
        child.join()


def cpu_timed(fn: object) -> float:
    start = time.process_time()
    fn()  # type: ignore[operator]
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=8)
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

    pairs = list(zip(images, qualities, strict=True))
    pool = PoolRunner(cores)
    pool.run(images[:cores])  # warm up the workers
    pool.worker_cpu.clear()
    contenders = {
        "bare": lambda: _bare_loop(pairs),
        "engine": lambda: [compress(d) for d in images],
        "pool": lambda: pool.run(images),
        "parallel": lambda: bare_in_parallel(pairs, cores),
    }
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {"bare": [], "engine": []}
    names = list(contenders)
    for index in range(args.rounds):
        k = index % len(names)
        for name in names[k:] + names[:k]:
            wall[name].append(timed(contenders[name]))
            if name in cpu:
                cpu[name].append(cpu_timed(contenders[name]))
    pool.close()
    med = {name: statistics.median(times) for name, times in wall.items()}
    best = {name: min(times) for name, times in wall.items()}

    def line(name: str, seconds: float) -> str:
        return (f"  {name:<30} {len(images) / seconds:6.2f} images/s  "
                f"{mp_total / seconds:6.1f} MP/s  ({seconds:.2f} s/round)")

    out(f"medians of {args.rounds} rounds")
    out(line("bare Pillow open+save", med["bare"]))
    out(line("engine compress, 1 process", med["engine"]))
    out(line(f"EnginePool, {cores} workers", med["pool"]))
    cpu_ratio = statistics.median(cpu["bare"]) / statistics.median(cpu["engine"])
    out(f"  engine / bare Pillow          {med['bare'] / med['engine']:.3f} wall, "
        f"{best['bare'] / best['engine']:.3f} (bests), {cpu_ratio:.3f} CPU time "
        "(target >= 0.95)")
    speedup = med["engine"] / med["pool"]
    out(f"  pool / single process         {speedup:.3f}, "
        f"{best['engine'] / best['pool']:.3f} (bests)  (target >= 1.8 on 2 cores)")
    ceiling = cores * med["bare"] / med["parallel"]
    out(f"  machine ceiling               {ceiling:.3f}  ({cores} independent processes of "
        "bare Pillow vs one)")
    out(f"  pool / ceiling                {speedup / ceiling:.3f}")
    busy = statistics.median(c / (cores * w) for c, w in zip(pool.worker_cpu, wall["pool"],
                                                            strict=True))
    inflation = statistics.median(pool.worker_cpu) / statistics.median(cpu["engine"])
    out(f"  pool workers busy             {busy:.3f} of their wall time")
    out(f"  CPU per image, pool / alone   {inflation:.3f}  (> 1: {cores} busy processes "
        "slow each other down on this machine)")
    out(f"  load average {os.getloadavg()[0]:.2f}")

    big = make_images(max(cores * 2, 2), args.memory_mp)
    runner = PoolRunner(cores)
    big_time = timed(lambda: runner.run(big))
    peaks = runner.close()
    out(f"{len(big)} JPEGs of {args.memory_mp:g} MP through the pool: "
        f"{len(big) / big_time:.2f} images/s")
    for pid, peak in sorted(peaks.items()):
        out(f"  worker {pid}: peak RSS " + (f"{peak:.0f} MiB" if peak else "n/a (no /proc)"))


if __name__ == "__main__":
    main()
