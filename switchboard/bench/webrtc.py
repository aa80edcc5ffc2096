"""``switchboard bench webrtc``: K concurrent calls placed by aiortc clients, each in its
own process, against the web app; connect time and voice-to-voice latency as the caller
measures it (end of its speech → first audible bot audio), and CPU per call.

The web app at web_host:web_port is used when it answers ``/healthz``; otherwise one is
started for the run (``python -m switchboard web``, loopback ICE, Rasa started if needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from av import AudioFrame
from prometheus_client.parser import text_string_to_metric_families

from switchboard.base.children import ChildProcess, http_probe
from switchboard.base.processes import process_tree_cpu_s
from switchboard.base.settings import PROJECT_ROOT, Settings
from switchboard.bench.console import ConsoleLoad
from switchboard.bench.kit import BenchError, Report, VoiceToVoice, piper_lines
from switchboard.conversation.audio import frame_samples
from switchboard.storage.database import prepare_database
from telephony.webrtc.ice import parse_addresses, restrict_host_candidates, rtc_configuration
from telephony.webrtc.media import CALL_RATE, FrameClock, FrameStamper, to_mono_int16

TURNS = 2
"""Caller lines per call (the kit's first lines: the order status, then its number)."""
PAUSE_BEFORE_SPEAKING_S = 0.4
TURN_TIMEOUT_S = 40.0
CONNECT_TIMEOUT_S = 20.0
WEB_START_TIMEOUT_S = 120.0


@dataclass
class CallFigures:
    """One client's measurements."""

    connect_ms: float | None = None
    voice_to_voice_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str | None = None


@dataclass
class BenchReport:
    calls: list[CallFigures]
    server_cpu_s: float | None
    wall_s: float
    frames: float = 0.0
    """Frames the web app's WebRTC tracks sent during the run."""
    late_frames: float = 0.0
    """Of those, sent over 20 ms late (its event loop was busy)."""
    console: ConsoleLoad | None = None


class CallerTrack(AudioStreamTrack):
    """The benchmark caller's microphone: silence, or the line it is saying."""

    def __init__(self) -> None:
        super().__init__()
        self._frame = frame_samples(CALL_RATE)
        self._silence = np.zeros(self._frame, dtype=np.int16)
        self._line: list[np.ndarray] = []
        self._said: asyncio.Future[float] | None = None
        self._clock = FrameClock()
        self._stamper = FrameStamper(CALL_RATE)

    def say(self, pcm: np.ndarray) -> asyncio.Future[float]:
        """Start saying ``pcm``; the future gets the time its last frame went out."""
        padded = np.pad(pcm, (0, -len(pcm) % self._frame))
        self._line = list(padded.reshape(-1, self._frame))
        self._said = asyncio.get_running_loop().create_future()
        return self._said

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.tick()
        pcm = self._line.pop(0) if self._line else self._silence
        if not self._line and self._said is not None and not self._said.done():
            self._said.set_result(time.perf_counter())
        return self._stamper.frame(pcm)


class Listener:
    """The caller's ear: reads the bot's audio and times the answer to each line with the
    kit's voice-to-voice measure (wall clock, ms)."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self._track = track
        self.voice = VoiceToVoice()
        self._answered: asyncio.Future[None] | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._track.recv()
                assert isinstance(frame, AudioFrame)
                if (self.voice.heard(to_mono_int16(frame), time.perf_counter() * 1000)
                        and self._answered is not None and not self._answered.done()):
                    self._answered.set_result(None)

    def said(self, at: float) -> asyncio.Future[None]:
        """The caller's line ended at ``at`` (``time.perf_counter``); done when answered."""
        self._answered = asyncio.get_running_loop().create_future()
        self.voice.speech_ended(at * 1000)
        return self._answered


async def _bot_turn(events: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    while True:
        message = await events.get()
        if message.get("type") == "turn" and message.get("speaker") == "bot":
            return message
        if message.get("type") == "ended":
            raise BenchError(f"the call ended early: {message.get('reason')}")


async def place_call(base_url: str, settings: Settings, lines: list[np.ndarray]) -> CallFigures:
    """One call: wait for the greeting, say each line, time each reply."""
    figures = CallFigures()
    restrict_host_candidates(parse_addresses(settings.webrtc_ice_addresses))
    pc = RTCPeerConnection(rtc_configuration(settings))
    caller = CallerTrack()
    pc.addTrack(caller)
    channel = pc.createDataChannel("events")
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    channel.on("message", lambda message: events.put_nowait(json.loads(message)))
    connected = asyncio.Event()
    listeners: list[Listener] = []
    pc.on("track", lambda track: listeners.append(Listener(track)))

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    started = time.perf_counter()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(trust_env=False, verify=False, timeout=20) as http:
            response = await http.post(f"{base_url}/softphone/offer", json={
                "sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        if response.status_code != 200:
            raise BenchError(f"offer refused ({response.status_code}): {response.text}")
        answer = response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT_S)
        figures.connect_ms = (time.perf_counter() - started) * 1000
        await asyncio.wait_for(_bot_turn(events), TURN_TIMEOUT_S)
        for line in lines:
            await asyncio.sleep(PAUSE_BEFORE_SPEAKING_S)
            said = await asyncio.wait_for(caller.say(line), TURN_TIMEOUT_S)
            await asyncio.wait_for(listeners[0].said(said), TURN_TIMEOUT_S)
            await asyncio.wait_for(_bot_turn(events), TURN_TIMEOUT_S)
        figures.voice_to_voice_ms = listeners[0].voice.samples_ms
        channel.send(json.dumps({"type": "hangup"}))
        await asyncio.sleep(0.2)
    except (BenchError, TimeoutError, httpx.HTTPError) as exc:
        figures.error = str(exc) or type(exc).__name__
    finally:
        await pc.close()
        for listener in listeners:
            listener.task.cancel()
    figures.wall_s = time.perf_counter() - started
    return figures


def _client_process(base_url: str, settings: Settings, lines: list[np.ndarray]) -> CallFigures:
    cpu = time.process_time()
    figures = asyncio.run(place_call(base_url, settings, lines))
    figures.client_cpu_s = time.process_time() - cpu
    return figures


def _health(base_url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{base_url}/healthz", timeout=2, trust_env=False, verify=False)
    except httpx.HTTPError:
        return None
    return response.json() if response.is_success else None


@contextlib.asynccontextmanager
async def web_app(settings: Settings) -> AsyncIterator[tuple[str, Settings, int]]:
    """The running web app, or one started for the run: (base URL, settings, its pid)."""
    scheme = "https" if settings.web_tls_cert else "http"
    base_url = f"{scheme}://{settings.web_host}:{settings.web_port}"
    health = _health(base_url)
    if health is not None:
        yield base_url, settings, int(health["pid"])
        return
    from switchboard.node import services_ready

    print(f"no web app at {base_url}; starting one for the run...", flush=True)
    settings = settings.model_copy(update={"webrtc_ice_addresses": "127.0.0.1"})
    async with services_ready(settings) as settings:
        web = ChildProcess(
            "web app", [sys.executable, "-m", "switchboard", "web"],
            log_path=settings.data_dir / "logs" / "bench-web.log",
            healthy=http_probe(f"{base_url}/healthz", timeout_s=2.0),
            env={"SWITCHBOARD_RASA_URL": settings.rasa_url,
                 "SWITCHBOARD_RASA_API_TOKEN": settings.rasa_api_token,
                 "SWITCHBOARD_SPEECH_SERVERS": settings.speech_servers,
                 "SWITCHBOARD_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
                 "SWITCHBOARD_LOG_LEVEL": "WARNING"},
            cwd=PROJECT_ROOT, start_timeout_s=WEB_START_TIMEOUT_S, error=BenchError,
        )
        await asyncio.to_thread(web.start)
        try:
            await asyncio.to_thread(web.wait_healthy)
            assert web.pid is not None
            yield base_url, settings, web.pid
        finally:
            await asyncio.to_thread(web.stop, 20.0)


def frame_lateness(base_url: str) -> tuple[float, float]:
    """(frames sent, frames sent over 20 ms late) by the web app's WebRTC tracks so far,
    from its ``/metrics``."""
    text = httpx.get(f"{base_url}/metrics", timeout=5, trust_env=False, verify=False).text
    total = on_time = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "switchboard_media_frame_lateness_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                total += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.02:
                on_time += sample.value
    return total, total - on_time


async def bench_webrtc(settings: Settings, calls: int, console_load: int = 0) -> Report:
    """Place ``calls`` concurrent calls, one client process each; with ``console_load``,
    that many threads read the console's heaviest requests from the same web app
    meanwhile."""
    lines = await asyncio.to_thread(piper_lines, settings, TURNS, CALL_RATE)
    async with web_app(settings) as (base_url, settings, server_pid):
        load = (ConsoleLoad(base_url, prepare_database(settings.effective_database_url),
                            console_load) if console_load else contextlib.nullcontext())
        frames_before = await asyncio.to_thread(frame_lateness, base_url)
        server_cpu = process_tree_cpu_s(server_pid)
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with load, context.Pool(calls) as pool:
            results = await asyncio.to_thread(
                pool.starmap, _client_process, [(base_url, settings, lines)] * calls
            )
        wall_s = time.perf_counter() - started
        used = process_tree_cpu_s(server_pid) - server_cpu
        frames_after = await asyncio.to_thread(frame_lateness, base_url)
    bench = BenchReport(results, used, wall_s,
                        frames=frames_after[0] - frames_before[0],
                        late_frames=frames_after[1] - frames_before[1],
                        console=load if isinstance(load, ConsoleLoad) else None)
    return report(bench)


def report(bench: BenchReport) -> Report:
    ok = [c for c in bench.calls if c.error is None]
    call_s = sum(c.wall_s for c in bench.calls) or 1.0
    figures: dict[str, Any] = {
        "calls_completed": f"{len(ok)} of {len(bench.calls)}",
        "wall_s": bench.wall_s,
        "client_cpu_per_call_pct": 100 * sum(c.client_cpu_s for c in bench.calls) / call_s,
    }
    if bench.server_cpu_s is not None:
        figures["server_cpu_per_call_pct"] = 100 * bench.server_cpu_s / call_s
    if bench.frames:
        figures["server_frames_sent"] = int(bench.frames)
        figures["server_frames_late_per_1000"] = round(1000 * bench.late_frames / bench.frames,
                                                       2)
    series = {"voice_to_voice": [ms for c in bench.calls for ms in c.voice_to_voice_ms],
              "connect": [c.connect_ms for c in bench.calls if c.connect_ms is not None]}
    if bench.console is not None:
        series["console_request"] = bench.console.samples_ms
        figures["console_requests_failed"] = bench.console.failures
    return Report(
        title=f"bench webrtc: {len(bench.calls)} concurrent aiortc calls (Opus) against the "
              "web app",
        series=series,
        figures=figures,
        notes=[*(f"failed: {c.error}" for c in bench.calls if c.error is not None),
               "voice_to_voice: end of the caller's speech → first audible bot frame at the "
               "caller (the kit's definition); connect: offer → connected; server CPU: "
               "models, dialog and media, % of a core per call; late frames: sent by the "
               "web app's tracks over 20 ms after their time; console_request: the console "
               "load's API reads (30-day aggregates, calls lists), if any."],
    )
