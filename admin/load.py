"""How the console shares its process with live calls: the web app serves the softphone's
calls (their media loop sends a frame every 20 ms) and the console in one process, and
console work must not make those frames late (``bench webrtc --console-load``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread

HEAVY_READS = 1
"""Console requests over many calls (figures, calls lists) that run at once in a process,
reading, rendering and serialising; they queue for it. Two at once took turns at the
interpreter lock with the media loop (bench webrtc --calls 2 --console-load 4: 132 of
1000 frames late with two, 27 with one). Light requests (the desk's accept, sign-in,
static files) run in the usual threads and never wait for them."""
LIGHT_THREADS = 4
"""Threads for every other sync request and dependency (Starlette's default: 40)."""
GIL_SWITCH_INTERVAL_S = 0.001
"""How long a thread keeps the interpreter lock while another waits (Python's default is
5 ms): the media loop, woken every 20 ms to send a frame, gets it back within ~1 ms."""

T = TypeVar("T")
_heavy = anyio.CapacityLimiter(HEAVY_READS)


async def heavy(work: Callable[..., T], *args: object) -> T:
    """``work(*args)``, a whole console request over many calls (its response built, not
    just its query), in one of ``HEAVY_READS`` threads."""
    return await anyio.to_thread.run_sync(partial(work, *args), limiter=_heavy)


def share_with_live_calls() -> None:
    """At the web app's start (four threads reading 30-day figures and calls lists over a
    million calls during two softphone calls: 144 of 1000 frames left over 20 ms late
    before, 27 after; 2 without load)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    anyio.to_thread.current_default_thread_limiter().total_tokens = LIGHT_THREADS
