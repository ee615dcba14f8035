"""The worker-process side of ``EnginePool``: warm up, then serve jobs on a pipe.

Protocol: the parent sends ``b"J" + image bytes`` (a job) or ``b"Q"`` (quit); the
worker answers each job with ``("ok", CompressResult)`` or
``("err", error class name, message, code)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from shared.errors import ImgpipeError

from .codec import compress
from .options import EngineOptions

log = logging.getLogger(__name__)

JOB = b"J"
QUIT = b"Q"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process, or None where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def _warm_up(options: EngineOptions) -> None:
    """Import codecs and plugins before reporting ready, so that their one-off cost
    is not charged to the first image's CPU budget."""
    import io

    from PIL import Image

    Image.init()
    for mode, fmt in (("RGB", "JPEG"), ("RGBA", "PNG"), ("RGB", "PNG")):
        buf = io.BytesIO()
        colour = (10, 20, 30, 128) if mode == "RGBA" else (10, 20, 30)
        Image.new(mode, (16, 16), colour).save(buf, fmt)
        with contextlib.suppress(ImgpipeError):
            compress(buf.getvalue(), options)


def worker_main(conn: Connection, options: EngineOptions) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _warm_up(options)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if message[:1] != JOB:
            return
        reply: tuple[Any, ...]
        try:
            reply = ("ok", compress(message[1:], options))
        except ImgpipeError as exc:
            reply = ("err", type(exc).__name__, exc.message, exc.code)
        except MemoryError:
            reply = ("err", "PolicyViolation", "out of memory", "memory_exceeded")
        except Exception as exc:  # a bug or an unexpected codec error: report, keep serving
            log.exception("unexpected error in engine worker")
            reply = ("err", "ImageRejected", f"{type(exc).__name__}: {exc}", "decode_failed")
        del message
        conn.send(reply)
