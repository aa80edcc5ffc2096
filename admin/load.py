"""How the console shares its process with live calls: the web app serves the softphone's
calls (their media loop sends a frame every 20 ms) and the console in one process, and
console work must not make those frames late (``bench webrtc --console-load``)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HEAVY_READS = 2
"""Console reads over many calls (figures, calls lists) that run at once in a process;
more would only take turns at the interpreter lock with the media loop. Light requests
(the desk's accept, sign-in, static files) never wait for them."""
GIL_SWITCH_INTERVAL_S = 0.001
"""How long a thread keeps the interpreter lock while another waits (Python's default is
5 ms): the media loop, woken every 20 ms to send a frame, gets it back within ~1 ms."""

_heavy = threading.BoundedSemaphore(HEAVY_READS)


@contextmanager
def heavy_read() -> Iterator[None]:
    """Around a console read over many calls (in a request's worker thread)."""
    with _heavy:
        yield


def share_with_live_calls() -> None:
    """At the web app's start (four threads reading 30-day figures over a million calls
    during two softphone calls: 144 of 1000 frames left over 20 ms late before, 21 after;
    3 without load)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
