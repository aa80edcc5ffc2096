"""``switchboard bench sip``: real SIP calls from PJSUA2 callers in other processes against
a node; voice-to-voice latency as the caller hears it.

Each caller process runs up to four calls (PJSUA2's limit per process). A caller listens to
the bot's RTP, waits until the bot has spoken and gone quiet, says its next line (G.711 on
the wire), and times the gap from the end of its line to the first audible bot audio.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from switchboard.base.processes import free_port
from switchboard.base.settings import Settings
from switchboard.bench.kit import Report, VoiceToVoice, audible
from switchboard.conversation.audio import FRAME_MS
from telephony.sip import RTP_PORTS_PER_WORKER
from telephony.sip.call import CallLeg
from telephony.sip.endpoint import SipEndpoint
from telephony.sip.media_port import SipAudioSink, SipAudioSource

RATE = 16000
CALLS_PER_PROCESS = 4
DIAL_TRIES = 10
GAP_MS = 700
"""Silence after the bot spoke before the caller says its next line."""
SETUP_TIMEOUT_S = 15.0
REPLY_TIMEOUT_S = 20.0


@dataclass
class CallStats:
    setup_ms: float | None = None
    voice_to_voice_ms: list[float] = field(default_factory=list)
    unanswered: int = 0
    failed: str | None = None


class CallerEvents:
    """PJSUA2 call events of the bench caller, handed to its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.answered: dict[int, asyncio.Event] = {}
        self.gone: dict[int, asyncio.Event] = {}
        self.status: dict[int, str] = {}
        self.on_replaced: Callable[[CallLeg], None] | None = None

    def _event(self, table: dict[int, asyncio.Event], key: int) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    def gone_event(self, key: int) -> asyncio.Event:
        """Set once call ``key`` is disconnected."""
        return self._event(self.gone, key)

    async def answered_in_time(self, key: int, timeout_s: float) -> bool:
        """Wait until call ``key`` is answered or gone, at most ``timeout_s``; whether it
        was answered."""
        confirmed, gone = self._event(self.answered, key), self._event(self.gone, key)
        waiters = [asyncio.ensure_future(confirmed.wait()), asyncio.ensure_future(gone.wait())]
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        return confirmed.is_set()

    def incoming(self, leg: CallLeg) -> None:
        """The bench only places calls."""

    def _answered(self, key: int) -> None:
        self._event(self.answered, key).set()

    def confirmed(self, leg: CallLeg) -> None:
        self.loop.call_soon_threadsafe(self._answered, leg.key)

    def _gone(self, leg: CallLeg, status: int, reason: str) -> None:
        self.status[leg.key] = f"{status} {reason}".strip()
        self._event(self.gone, leg.key).set()
        leg.source.close()

    def disconnected(self, leg: CallLeg, status: int, reason: str) -> None:
        self.loop.call_soon_threadsafe(self._gone, leg, status, reason)

    def dtmf(self, leg: CallLeg, digit: str) -> None:
        """The bot sends no DTMF."""

    def transfer_status(self, leg: CallLeg, status: int, final: bool) -> None:
        """Not used by the bench."""

    def rtp_timeout(self, leg: CallLeg) -> None:
        """The call ends by itself when the node hangs up."""

    def replaced(self, leg: CallLeg) -> None:
        """A node took the call back (RFC 3891): said to ``on_replaced``, if set."""
        if self.on_replaced is not None:
            self.loop.call_soon_threadsafe(self.on_replaced, leg)


async def converse(leg: CallLeg, lines: list[np.ndarray], stats: CallStats) -> None:
    """Speak each line when the bot has finished, and time its answer (on the caller's
    media clock: one received frame every 20 ms)."""
    source, sink = leg.source, leg.sink
    pending = list(lines)
    voice = VoiceToVoice()
    speaking: np.ndarray | None = None
    position = frames = silent = 0
    heard_bot = False
    said_at_ms = 0
    silence = np.zeros(RATE * FRAME_MS // 1000, dtype=np.int16)
    step = len(silence)
    while (frame := await source.read()) is not None:
        frames += 1
        now_ms = frames * FRAME_MS
        voice.heard(frame, now_ms)
        if audible(frame):
            heard_bot, silent = True, 0
        else:
            silent += 1
        if voice.waiting and now_ms - said_at_ms > REPLY_TIMEOUT_S * 1000:
            stats.unanswered += 1
            voice.give_up()
        if speaking is not None:
            chunk = speaking[position : position + step]
            position += step
            await sink.write(np.pad(chunk, (0, step - len(chunk))))
            if position >= len(speaking):
                speaking, said_at_ms, heard_bot = None, now_ms, False
                voice.speech_ended(now_ms)
            continue
        await sink.write(silence)
        if not voice.waiting and heard_bot and silent * FRAME_MS >= GAP_MS:
            if not pending:
                break
            speaking, position = pending.pop(0), 0
    stats.voice_to_voice_ms = voice.samples_ms


async def _one_call(endpoint: SipEndpoint, events: CallerEvents, uri: str,
                    lines: list[np.ndarray]) -> CallStats:
    stats = CallStats()
    started = time.perf_counter()
    for attempt in range(DIAL_TRIES):
        try:
            leg = await asyncio.wrap_future(endpoint.submit(lambda: endpoint.dial(uri)))
            break
        except Exception as exc:  # a refused dial is a failed call, not a failed bench
            if "PJ_ETOOMANY" in str(exc) and attempt + 1 < DIAL_TRIES:
                # PJSUA frees the slot of this process's previous call a moment after
                # its DISCONNECTED event: the caller's limit, not the node's.
                await asyncio.sleep(0.2)
                continue
            stats.failed = f"dial: {exc}"
            return stats
    started = time.perf_counter()
    gone = events.gone_event(leg.key)
    if not await events.answered_in_time(leg.key, SETUP_TIMEOUT_S):
        stats.failed = f"setup: {events.status.get(leg.key, 'timeout')}"
    else:
        stats.setup_ms = (time.perf_counter() - started) * 1000
        budget = 60 + len(lines) * (REPLY_TIMEOUT_S + 10)
        try:
            await asyncio.wait_for(converse(leg, lines, stats), budget)
        except TimeoutError:
            stats.failed = "conversation timed out"
    if not gone.is_set():
        endpoint.submit(lambda: endpoint.hangup(leg.key))
        try:
            await asyncio.wait_for(gone.wait(), 10)
        except TimeoutError:
            stats.failed = stats.failed or "hangup timed out"
    return stats


def caller_endpoint(rtp_port: int, user: str = "") -> tuple[SipEndpoint, CallerEvents]:
    """A PJSUA2 endpoint placing calls from this process (UDP, a free SIP port, RTP from
    ``rtp_port``, From ``user`` if given), and its events on the running loop."""
    loop = asyncio.get_running_loop()
    events = CallerEvents(loop)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        sip_port=free_port(socket.SOCK_DGRAM), sip_transports="udp", sip_rtp_port=rtp_port,
        sip_record=False, sip_allowed_networks="", sip_max_calls=CALLS_PER_PROCESS,
        sip_username=user,
    )

    def new_media() -> tuple[SipAudioSource, SipAudioSink]:
        return SipAudioSource(loop, RATE), SipAudioSink(RATE)

    return SipEndpoint(settings, events, new_media, sample_rate=RATE), events


async def _caller_process(index: int, uri: str, calls: int, concurrency: int,
                          lines: list[np.ndarray], rtp_base: int) -> list[CallStats]:
    endpoint, events = caller_endpoint(rtp_base)
    await asyncio.wrap_future(endpoint.start())
    limit = asyncio.Semaphore(concurrency)

    async def limited() -> CallStats:
        async with limit:
            return await _one_call(endpoint, events, uri, lines)

    try:
        return list(await asyncio.gather(*(limited() for _ in range(calls))))
    finally:
        endpoint.stop()
        await asyncio.to_thread(endpoint.join, 20)


def _run_process(job: tuple[int, str, int, int, list[np.ndarray], int]
                 ) -> tuple[list[dict[str, Any]], float]:
    started = time.process_time()
    stats = asyncio.run(_caller_process(*job))
    return [asdict(s) for s in stats], time.process_time() - started


@dataclass
class SipBenchResult:
    calls: int
    concurrency: int
    failed: int
    unanswered_turns: int
    setup_ms: list[float]
    voice_to_voice_ms: list[float]
    caller_cpu_s: float
    node_cpu_s: float | None
    wall_s: float
    media_cpu_s: float | None = None

    def report(self) -> Report:
        return Report(
            title=f"bench sip: {self.calls} calls, {self.concurrency} at a time, G.711 "
                  "from PJSUA2 callers in other processes",
            series={"voice_to_voice": self.voice_to_voice_ms, "call_setup": self.setup_ms},
            figures={
                "failed_calls": self.failed, "unanswered_turns": self.unanswered_turns,
                "node_cpu_s_per_call": (self.node_cpu_s / self.calls
                                        if self.node_cpu_s is not None else None),
                "caller_cpu_s_per_call": self.caller_cpu_s / max(1, self.calls),
                "media_cpu_s_per_call": (self.media_cpu_s / self.calls
                                         if self.media_cpu_s is not None else None),
                "media_cpu_pct_of_core_per_call": (
                    100 * self.media_cpu_s / (self.wall_s * self.concurrency)
                    if self.media_cpu_s is not None else None),
                "wall_s": self.wall_s,
            },
            notes=["voice_to_voice: end of the caller's speech → first audible bot frame at "
                   "the caller (the kit's definition); call_setup: INVITE → answered.",
                   "node CPU: every process of the node; media CPU: the SIP workers alone "
                   "(% of a core per call: over the run, per call slot)."],
        )


def run_sip_bench(uri: str, calls: int, concurrency: int, lines: list[np.ndarray], *,
                  node_cpu: Any = None, media_cpu: Any = None,
                  rtp_base: int = 30000) -> SipBenchResult:
    """Place ``calls`` calls, ``concurrency`` at a time, from caller processes.

    ``node_cpu`` and ``media_cpu`` (optional) return the CPU seconds so far of the node and
    of its SIP workers, sampled around the run."""
    processes = max(1, math.ceil(concurrency / CALLS_PER_PROCESS))
    shares = [calls // processes + (1 if i < calls % processes else 0) for i in range(processes)]
    jobs = [(i, uri, share, min(CALLS_PER_PROCESS, math.ceil(concurrency / processes)),
             lines, rtp_base + i * RTP_PORTS_PER_WORKER) for i, share in enumerate(shares) if share]
    cpu_before = node_cpu() if node_cpu else None
    media_before = media_cpu() if media_cpu else None
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        outputs = pool.map(_run_process, jobs)
    wall = time.perf_counter() - started
    node_cpu_s = node_cpu() - cpu_before if node_cpu and cpu_before is not None else None
    media_cpu_s = (media_cpu() - media_before if media_cpu and media_before is not None
                   else None)
    stats = [CallStats(**s) for output, _ in outputs for s in output]
    return SipBenchResult(
        calls=calls, concurrency=concurrency,
        failed=sum(1 for s in stats if s.failed),
        unanswered_turns=sum(s.unanswered for s in stats),
        setup_ms=[s.setup_ms for s in stats if s.setup_ms is not None],
        voice_to_voice_ms=[t for s in stats for t in s.voice_to_voice_ms],
        caller_cpu_s=sum(cpu for _, cpu in outputs), node_cpu_s=node_cpu_s, wall_s=wall,
        media_cpu_s=media_cpu_s,
    )
