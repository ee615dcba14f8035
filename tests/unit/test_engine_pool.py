"""EnginePool: parallel worker processes, the CPU-time limit, crashes, close."""

from __future__ import annotations

import asyncio
import os
import signal
from functools import lru_cache

import psutil
import pytest
from PIL import Image

from services.processor.engine import EngineOptions, EnginePool, compress
from shared.errors import ImageRejected, PolicyViolation
from tests import imagecorpus as corpus


@lru_cache(maxsize=1)
def big_jpeg() -> bytes:
    """A grainy 12 MP progressive JPEG: over half a CPU second to re-encode."""
    size = (4000, 3000)
    base = corpus.photo().resize(size, Image.Resampling.BILINEAR)
    grain = Image.merge("RGB", tuple(corpus.noise(size, seed) for seed in (1, 2, 3)))
    return corpus.encode(Image.blend(base, grain, 0.25), "JPEG", quality=95, progressive=True)


@lru_cache(maxsize=1)
def small_jpeg() -> bytes:
    return corpus.encode(corpus.quadrants(), "JPEG", quality=90)


def medium_images() -> list[bytes]:
    return [corpus.encode(corpus.photo((640 + 16 * i, 480)), "JPEG", quality=70 + 4 * i)
            for i in range(6)]


async def test_parallel_results_match_sync_compress() -> None:
    images = medium_images()
    async with EnginePool(workers=2) as pool:
        results = await asyncio.gather(*(pool.compress(d) for d in images))
        assert set(pool.stats.jobs_by_pid) == set(pool.worker_pids())
        assert len(pool.stats.jobs_by_pid) == 2  # both processes did work
        assert sum(pool.stats.jobs_by_pid.values()) == len(images)
    for data, result in zip(images, results, strict=True):
        assert result == compress(data)


async def test_cpu_time_limit_kills_and_replaces_the_worker() -> None:
    async with EnginePool(EngineOptions(cpu_seconds=0.05), workers=1) as pool:
        (before,) = pool.worker_pids()
        with pytest.raises(PolicyViolation) as caught:
            await asyncio.wait_for(pool.compress(big_jpeg()), 60)
        assert caught.value.code == "cpu_time_exceeded"
        assert not psutil.pid_exists(before) or psutil.Process(before).status() == "zombie"
        (after,) = pool.worker_pids()
        assert after != before
        assert pool.stats.cpu_kills == 1
        result = await asyncio.wait_for(pool.compress(small_jpeg()), 60)
        assert result.format == "JPEG" and result.quality_out == 45


async def test_generous_cpu_limit_lets_the_big_image_through() -> None:
    # The same image as above passes with the default limit: the kill above is the
    # limit's doing, not a failure of the image.
    async with EnginePool(workers=1) as pool:
        result = await asyncio.wait_for(pool.compress(big_jpeg()), 120)
    assert (result.width, result.height) == (4000, 3000)
    assert pool.stats.cpu_kills == 0


async def test_crashed_worker_does_not_hang_the_caller() -> None:
    async with EnginePool(workers=1) as pool:
        await pool.compress(small_jpeg())  # the worker is up and warm
        (pid,) = pool.worker_pids()
        job = asyncio.ensure_future(pool.compress(big_jpeg()))
        await asyncio.sleep(0.15)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ImageRejected) as caught:
            await asyncio.wait_for(job, 30)
        assert caught.value.code == "worker_crashed"
        assert pool.worker_pids() != [pid]
        result = await asyncio.wait_for(pool.compress(small_jpeg()), 60)
        assert result.kept_original is False


async def test_worker_dead_while_idle_is_replaced_transparently() -> None:
    async with EnginePool(workers=1) as pool:
        await pool.compress(small_jpeg())
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        result = await asyncio.wait_for(pool.compress(small_jpeg()), 60)
        assert result.format == "JPEG"
        assert pool.worker_pids() != [pid]


async def test_errors_cross_the_process_boundary_with_their_codes() -> None:
    async with EnginePool(workers=1) as pool:
        pids = pool.worker_pids()
        with pytest.raises(ImageRejected) as empty:
            await pool.compress(b"")
        with pytest.raises(ImageRejected) as html:
            await pool.compress(b"<html><body>hello</body></html>")
        with pytest.raises(PolicyViolation) as bomb:
            await pool.compress(corpus.png_header_only(8_000, 7_000))
        assert (empty.value.code, html.value.code, bomb.value.code) == (
            "empty_body", "not_an_image", "too_many_pixels")
        assert pool.worker_pids() == pids  # rejections do not cost a worker


async def test_more_calls_than_workers_wait_their_turn() -> None:
    async with EnginePool(workers=1) as pool:
        results = await asyncio.gather(*(pool.compress(small_jpeg()) for _ in range(5)))
    assert len({r.data for r in results}) == 1


async def test_cancelled_call_leaves_the_pool_usable() -> None:
    async with EnginePool(workers=1) as pool:
        job = asyncio.ensure_future(pool.compress(big_jpeg()))
        await asyncio.sleep(0.1)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        result = await asyncio.wait_for(pool.compress(small_jpeg()), 60)
        assert result.format == "JPEG"


async def test_close_stops_the_workers() -> None:
    pool = EnginePool(workers=2)
    await pool.compress(small_jpeg())
    pids = pool.worker_pids()
    await pool.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    with pytest.raises(RuntimeError):
        await pool.compress(small_jpeg())
