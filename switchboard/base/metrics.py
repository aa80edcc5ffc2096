"""The node's Prometheus metrics, one set for all its processes.

`switchboard run` gives its children a ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode), so the SIP workers, the web app and the supervisor each record into it
and the web app's ``/metrics`` serves the sum. Labels never carry a phone number or a call
id: only transports, end reasons, stages and modes.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set by `switchboard run` before this module is imported (see ``cli._metrics_dir``)."""
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0,
                   5.0, 10.0)

CALLS_ACTIVE = Gauge("switchboard_calls_active", "Calls in progress on this node.",
                     ["transport"], multiprocess_mode="livesum")
CALLS_ENDED = Counter("switchboard_calls_ended", "Calls ended, by end reason.",
                      ["transport", "reason"])
TURN_STAGE = Histogram(
    "switchboard_turn_stage_seconds",
    "Where a bot reply's time went: endpoint (silence until the turn ended), stt (after "
    "the end), dialog, tts (until the first audio), response (caller's end of speech to "
    "the bot's first audio).", ["stage"], buckets=LATENCY_BUCKETS)
SPEECH_QUEUE_WAIT = Histogram(
    "switchboard_speech_queue_wait_seconds",
    "Time a transcription waited in a speech server's queue before the model took it.",
    buckets=(0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2))
FRAME_LATENESS = Histogram(
    "switchboard_media_frame_lateness_seconds",
    "How late each 20 ms frame a WebRTC track sends leaves its process's event loop "
    "(a frame over 0.02 s late is late: the browser's jitter buffer has to absorb it).",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16))
RECOVERIES = Counter(
    "switchboard_recoveries",
    "Conversations recovered after a lost node: redial (the caller called again and "
    "resumed), reconnect (a browser resumed), node_lost (a survivor ended a lost node's "
    "call and queued its analysis).", ["mode"])
HEARTBEAT_AGE = Gauge(
    "switchboard_heartbeat_age_seconds",
    "Seconds since this node last renewed its heartbeat in Redis.",
    multiprocess_mode="max")


def process_ended(pid: int) -> None:
    """A child died: its live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def exposition() -> tuple[bytes, str]:
    """The text served at ``/metrics``: every process of the node in multiprocess mode,
    this process alone otherwise."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
