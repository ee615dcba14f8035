"""``EnginePool``: ``compress`` in killable worker processes, off the event loop.

Each worker is a ``multiprocessing`` process with its own pipe; one image is in a
worker at a time, and callers beyond the number of workers wait for a free one.
While a worker runs an image, a thread of the parent polls the pipe and reads the
worker's CPU time (``/proc/<pid>/stat``; wall time where there is no /proc).  Past
``cpu_seconds`` the worker is killed (SIGKILL, so C code in a decoder cannot hold
it) and replaced, and the caller gets ``PolicyViolation(code="cpu_time_exceeded")``.
A wall-clock backstop (``4 x cpu_seconds + 10 s``) catches a worker that is stuck
without using CPU (``wall_time_exceeded``).  A worker that dies (segfault, OOM
kill) gives ``ImageRejected(code="worker_crashed")`` and is replaced; no caller
hangs, because the pipe reports end-of-file as soon as the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from shared import errors
from shared.errors import ImageRejected, ImgpipeError, PolicyViolation, TransientError

from .options import CompressResult, EngineOptions
from .worker import JOB, QUIT, process_cpu, worker_main

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT = 120.0
_WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}


class _WorkerGone(Exception):
    def __init__(self, error: ImgpipeError | None, *, sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


@dataclass
class _Worker:
    proc: BaseProcess
    conn: Connection
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid or -1

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


@dataclass
class PoolStats:
    jobs_by_pid: Counter[int] = field(default_factory=Counter)
    cpu_kills: int = 0
    wall_kills: int = 0
    crashes: int = 0
    respawns: int = 0


def _rebuild_error(reply: tuple[Any, ...]) -> ImgpipeError:
    _tag, name, message, code = reply
    cls = getattr(errors, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, ImgpipeError)):
        cls = ImageRejected
    return cls(str(message), code=str(code))


class EnginePool:
    """A pool of engine worker processes (one per core by default)."""

    def __init__(
        self,
        options: EngineOptions = EngineOptions(),  # noqa: B008 - frozen, safe default
        workers: int | None = None,
        *,
        mp_context: str = "spawn",
        close_timeout: float = 30.0,
    ) -> None:
        self.options = options
        self.close_timeout = close_timeout
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            workers = workers or os.cpu_count() or 1
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.size = workers
        self.stats = PoolStats()
        self._ctx: Any = multiprocessing.get_context(mp_context)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        self._all: list[_Worker] = [self._spawn() for _ in range(workers)]
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        for worker in self._all:
            self._idle.put_nowait(worker)
        self._closed = False
        self._recycling: set[asyncio.Future[None]] = set()

    # -- processes -------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main, args=(child, self.options), name="imgpipe-engine", daemon=True
        )
        added = [k for k in _WORKER_MALLOC_ENV if k not in os.environ]
        try:
            # glibc reads these at process start: keep freed image buffers mapped in
            # the worker instead of returning them to the kernel after every image
            # (which costs page faults on the next one).  Peak RSS is unchanged.
            for key in added:
                os.environ[key] = _WORKER_MALLOC_ENV[key]
            proc.start()
        finally:
            for key in added:
                os.environ.pop(key, None)
        child.close()
        return _Worker(proc, parent)

    def _replace(self, old: _Worker) -> _Worker:
        old.kill()
        new = self._spawn()
        self._all = [new if w is old else w for w in self._all]
        self.stats.respawns += 1
        return new

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._all]

    # -- one job, in an executor thread ------------------------------------------
    def _wait_ready(self, worker: _Worker) -> None:
        if worker.ready:
            return
        try:
            if not worker.conn.poll(_STARTUP_TIMEOUT):
                raise _WorkerGone(None, sent=False)
            worker.conn.recv()
        except (EOFError, OSError) as exc:
            raise _WorkerGone(None, sent=False) from exc
        worker.ready = True

    def _run_job(self, worker: _Worker, data: bytes) -> tuple[Any, ...]:
        self._wait_ready(worker)
        limit = self.options.cpu_seconds
        interval = min(0.05, max(0.005, limit / 10))
        start_wall = time.monotonic()
        start_cpu = process_cpu(worker.pid)
        try:
            worker.conn.send_bytes(JOB + data)
        except (OSError, ValueError) as exc:
            raise _WorkerGone(None, sent=False) from exc
        backstop = start_wall + 4 * limit + 10.0
        while True:
            try:
                if worker.conn.poll(interval):
                    reply: tuple[Any, ...] = worker.conn.recv()
                    return reply
            except (EOFError, OSError) as exc:
                raise self._crashed(worker) from exc
            now_cpu = process_cpu(worker.pid)
            if start_cpu is not None and now_cpu is not None:
                used = now_cpu - start_cpu
            else:
                used = time.monotonic() - start_wall
            if used > limit:
                worker.kill()
                self.stats.cpu_kills += 1
                err = PolicyViolation(
                    f"image processing used {used:.2f}s of CPU, over the {limit}s limit",
                    code="cpu_time_exceeded",
                )
                raise _WorkerGone(err, sent=True)
            if time.monotonic() > backstop:
                worker.kill()
                self.stats.wall_kills += 1
                err = PolicyViolation(
                    f"image processing took over {backstop - start_wall:.1f}s of wall time",
                    code="wall_time_exceeded",
                )
                raise _WorkerGone(err, sent=True)
            if not worker.proc.is_alive():
                raise self._crashed(worker)

    def _crashed(self, worker: _Worker) -> _WorkerGone:
        worker.proc.join(1)
        self.stats.crashes += 1
        exitcode = worker.proc.exitcode
        log.warning("engine worker %s died (exit code %s)", worker.pid, exitcode)
        err = ImageRejected(
            f"the worker process died while processing the image (exit code {exitcode})",
            code="worker_crashed",
        )
        return _WorkerGone(err, sent=True)

    # -- public API ------------------------------------------------------------------
    async def compress(self, data: bytes) -> CompressResult:
        """Compress one image in a worker process; raises like ``engine.compress``."""
        if self._closed:
            raise RuntimeError("EnginePool is closed")
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            worker = await self._idle.get()
            give_back = True
            future = loop.run_in_executor(self._executor, self._run_job, worker, data)
            try:
                reply = await asyncio.shield(future)
            except _WorkerGone as gone:
                worker = await loop.run_in_executor(self._executor, self._replace, worker)
                if gone.error is not None:
                    raise gone.error from None
                if attempt == 1:
                    raise TransientError(
                        "engine workers fail to start", code="engine_unavailable"
                    ) from None
                continue  # the worker was dead before it got the job: retry once
            except asyncio.CancelledError:
                worker.proc.kill()  # the job's thread then sees end-of-file promptly
                give_back = False
                self._recycling.add(asyncio.ensure_future(self._recycle(worker, future)))
                raise
            finally:
                if give_back:
                    self._idle.put_nowait(worker)
            self.stats.jobs_by_pid[worker.pid] += 1
            if reply[0] == "ok":
                result: CompressResult = reply[1]
                return result
            raise _rebuild_error(reply)
        raise AssertionError("unreachable")

    async def _recycle(self, worker: _Worker, future: asyncio.Future[Any]) -> None:
        with contextlib.suppress(BaseException):  # the caller is gone; only the worker matters
            await future
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(self._executor, self._replace, worker)
        self._idle.put_nowait(new)
        task = asyncio.current_task()
        if task is not None:
            self._recycling.discard(task)

    async def close(self) -> None:
        """Wait for in-flight images (up to ``close_timeout`` s), then stop every worker."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.close_timeout
        collected = 0
        while collected < self.size:
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._idle.get(), max(remaining, 0.01))
            except TimeoutError:
                break
            collected += 1
        for worker in self._all:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send_bytes(QUIT)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._join_all)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _join_all(self) -> None:
        for worker in self._all:
            worker.proc.join(2)
            worker.kill()

    async def __aenter__(self) -> EnginePool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
