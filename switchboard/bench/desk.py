"""``switchboard bench desk``: how fast an agent reaches a caller, and what the agent's
bridge adds to each direction of the conversation.

Per call: a caller (Piper's voice, through the real pipeline: Whisper, the Rasa bot) asks
for an agent and waits in the desk's queue (Redis); an agent (aiortc, standing in for the
desk page) signs in to the console served for the run, takes the call and connects. Then:

- ``accept → agent heard``: from the agent's accept request to the first audible frame of
  the agent's voice leaving the pipeline towards the caller (signalling relayed through
  Redis, ICE and DTLS, the first packets and the bridge);
- ``agent → caller``: a tone burst from the agent's microphone (the first frame aiortc
  sends) to its first frame leaving the pipeline towards the caller;
- ``caller → agent``: a burst entering the pipeline from the caller to its first frame
  decoded at the agent.

The caller's own transport (SIP, WebRTC) adds its jitter buffer on top, as for the bot's
voice; these figures are what the desk's bridge adds. Redis is the configured one, or one
started for the run; the database is a temporary one. Every peer connection is on
loopback (no STUN server).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from av import AudioFrame
from fastapi import FastAPI

from admin.console import install_console
from switchboard.base.processes import free_port
from switchboard.base.settings import Settings
from switchboard.bench.kit import BenchError, Report, trim_silence
from switchboard.bench.local_cluster import RedisServer
from switchboard.conversation.audio import FRAME_MS, frame_samples
from switchboard.conversation.call import CallRequest
from switchboard.node import Node, services_ready
from switchboard.storage.live import LiveState
from telephony.webrtc.media import FrameClock, FrameStamper, to_mono_int16

RATE = 16000
BROWSER_RATE = 48000
BURST_HZ = 1000.0
AGENT_HZ = 1250.0
"""The agent's greeting tone: far from the hold music's notes and their harmonics."""
BURST_MS = 400
QUEUE_WAIT_S = 60.0
"""How long the bench waits for the caller's handoff to reach the queue."""
STEP_TIMEOUT_S = 15.0


def tone(ms: int, hz: float, rate: int) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * hz * t) * 9000).astype(np.int16)


def holds(frame: np.ndarray, rate: int, hz: float) -> bool:
    """Whether a frame is loud and mostly ``hz``."""
    if frame.size == 0 or np.abs(frame).max() < 1500:
        return False
    power = np.abs(np.fft.rfft(frame.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(frame.size, 1 / rate)
    return bool(power[np.abs(freqs - hz) < 60].sum() > 0.3 * power.sum())


class CallerSource:
    """The caller: says its line, then silence, or a burst when asked; notes when each
    burst's first frame entered the pipeline."""

    def __init__(self, line: np.ndarray) -> None:
        self.sample_rate = RATE
        self.end_reason: str | None = None
        self._frame = frame_samples(RATE)
        self._pending = list(np.pad(line, (0, -len(line) % self._frame)).reshape(
            -1, self._frame))
        self._clock = FrameClock()
        self._burst_at: asyncio.Future[float] | None = None
        self.closed = False

    def burst(self) -> asyncio.Future[float]:
        frames = tone(BURST_MS, BURST_HZ, RATE)
        self._pending = list(frames.reshape(-1, self._frame))
        self._burst_at = asyncio.get_running_loop().create_future()
        return self._burst_at

    async def read(self) -> np.ndarray | None:
        await self._clock.tick()
        if self.closed:
            return None
        if self._pending:
            if self._burst_at is not None and not self._burst_at.done():
                self._burst_at.set_result(time.perf_counter())
            return self._pending.pop(0)
        return np.zeros(self._frame, dtype=np.int16)


class CallerEar:
    """The pipeline's output towards the caller, time-stamped."""

    def __init__(self) -> None:
        self.sample_rate = RATE
        self._waiting: tuple[float, float, asyncio.Future[float]] | None = None

    def first(self, hz: float, after: float) -> asyncio.Future[float]:
        """The time of the first frame holding ``hz`` written after ``after``."""
        future = asyncio.get_running_loop().create_future()
        self._waiting = (hz, after, future)
        return future

    async def write(self, frame: np.ndarray) -> None:
        now = time.perf_counter()
        if self._waiting is not None:
            hz, after, future = self._waiting
            if now >= after and not future.done() and holds(frame, RATE, hz):
                future.set_result(now)
                self._waiting = None

    def clear(self) -> None:
        pass


class AgentMic(AudioStreamTrack):
    """The agent's microphone: a steady tone (their greeting) or silence, and bursts; notes
    when each burst's first frame went out."""

    def __init__(self) -> None:
        super().__init__()
        self._frame = frame_samples(BROWSER_RATE)
        self._pending: list[np.ndarray] = []
        self._clock = FrameClock()
        self._stamper = FrameStamper(BROWSER_RATE)
        self._sent_at: asyncio.Future[float] | None = None
        self.greeting = True

    def burst(self) -> asyncio.Future[float]:
        self.greeting = False
        self._pending = list(tone(BURST_MS, BURST_HZ, BROWSER_RATE).reshape(-1, self._frame))
        self._sent_at = asyncio.get_running_loop().create_future()
        return self._sent_at

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.tick()
        if self._pending:
            pcm = self._pending.pop(0)
            if self._sent_at is not None and not self._sent_at.done():
                self._sent_at.set_result(time.perf_counter())
        elif self.greeting:
            pcm = tone(FRAME_MS, AGENT_HZ, BROWSER_RATE)
        else:
            pcm = np.zeros(self._frame, dtype=np.int16)
        return self._stamper.frame(pcm)


class AgentEar:
    """What the agent's browser decodes, time-stamped."""

    def __init__(self) -> None:
        self._waiting: tuple[float, asyncio.Future[float]] | None = None
        self.task: asyncio.Task[None] | None = None

    def listen(self, track: MediaStreamTrack) -> None:
        self.task = asyncio.create_task(self._read(track))

    def first_burst(self, after: float) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        self._waiting = (after, future)
        return future

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                now = time.perf_counter()
                if self._waiting is None:
                    continue
                after, future = self._waiting
                pcm = to_mono_int16(frame)
                if now >= after and not future.done() and holds(pcm, frame.sample_rate,
                                                                 BURST_HZ):
                    future.set_result(now)
                    self._waiting = None


@asynccontextmanager
async def console(settings: Settings, node: Node) -> AsyncIterator[str]:
    """The console on the node's database, served on a free loopback port."""
    app = FastAPI()
    install_console(app, settings, node.sessions)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-console", daemon=True)
    thread.start()
    await asyncio.to_thread(_wait_started, server, 20.0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)


def _wait_started(server: uvicorn.Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline:
            raise BenchError("the console did not start")
        time.sleep(0.05)


def agent_client(url: str, node: Node) -> tuple[httpx.Client, str]:
    """A signed-in agent of the console (a new user) and its CSRF token."""
    import re

    from admin.accounts import AccountRepository

    password = secrets.token_urlsafe(16)
    name = f"bench-agent-{secrets.token_hex(3)}"
    AccountRepository.from_settings(node.settings, node.sessions).create_user(
        name, password, "agent")
    client = httpx.Client(base_url=url, timeout=STEP_TIMEOUT_S + 5)
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if token is None:
        raise BenchError("the console's login page has no CSRF token")
    client.post("/login", data={"username": name, "password": password,
                                "csrf_token": token.group(1), "next": "/desk"})
    desk = client.get("/desk")
    csrf = re.search(r'data-csrf="([^"]+)"', desk.text)
    if csrf is None:
        raise BenchError(f"cannot open the desk as an agent (HTTP {desk.status_code})")
    return client, csrf.group(1)


async def one_call(node: Node, line: np.ndarray, client: httpx.Client, csrf: str,
                   report: Report) -> None:
    """One caller asks for an agent; the agent takes the call; the three figures."""
    source, ear = CallerSource(line), CallerEar()
    handle = node.start_call(CallRequest(transport="bench", source=source, sink=ear,
                                         caller="bench-caller"))
    live = LiveState(node.settings.redis_url)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # loopback only: no STUN
    mic, agent_ear = AgentMic(), AgentEar()
    try:
        call_id = await handle.started()
        deadline = time.monotonic() + QUEUE_WAIT_S
        while True:
            state = await asyncio.to_thread(live.call, call_id)
            if state is not None and state.state == "queued":
                break
            if time.monotonic() > deadline or handle.media_ms > QUEUE_WAIT_S * 1000:
                raise BenchError("the caller's request for an agent never reached the queue")
            await asyncio.sleep(0.1)
        headers = {"X-CSRF-Token": csrf}
        await asyncio.to_thread(client.post, "/desk/presence",
                                json={"status": "available"}, headers=headers)
        accepted_at = time.perf_counter()
        heard = ear.first(AGENT_HZ, accepted_at)
        answer = await asyncio.to_thread(client.post, f"/desk/calls/{call_id}/accept",
                                         headers=headers)
        if answer.status_code != 200:
            raise BenchError(f"accept: HTTP {answer.status_code} {answer.text}")
        pc.addTrack(mic)
        channel = pc.createDataChannel("desk")
        pc.on("track", agent_ear.listen)
        await pc.setLocalDescription(await pc.createOffer())
        connect = await asyncio.to_thread(
            client.post, f"/desk/calls/{call_id}/connect",
            json={"sdp": pc.localDescription.sdp, "type": "offer"}, headers=headers)
        if connect.status_code != 200:
            raise BenchError(f"connect: HTTP {connect.status_code} {connect.text}")
        await pc.setRemoteDescription(RTCSessionDescription(**connect.json()))
        report.series["accept → agent heard"].append(
            (await asyncio.wait_for(heard, STEP_TIMEOUT_S) - accepted_at) * 1000)
        for _ in range(3):  # a few bursts each way
            mic.greeting = False
            await asyncio.sleep(0.6)
            sent = mic.burst()
            arrived = ear.first(BURST_HZ, time.perf_counter())
            report.series["agent → caller"].append(
                (await asyncio.wait_for(arrived, STEP_TIMEOUT_S)
                 - await asyncio.wait_for(sent, STEP_TIMEOUT_S)) * 1000)
            await asyncio.sleep(0.6)
            said = source.burst()
            reached = agent_ear.first_burst(time.perf_counter())
            report.series["caller → agent"].append(
                (await asyncio.wait_for(reached, STEP_TIMEOUT_S)
                 - await asyncio.wait_for(said, STEP_TIMEOUT_S)) * 1000)
        channel.send('{"type": "hangup"}')
        result = await asyncio.wait_for(handle.result(), STEP_TIMEOUT_S)
        report.figures["calls ended by the agent"] = report.figures.get(
            "calls ended by the agent", 0) + (result.reason == "agent_hangup")
    finally:
        source.closed = True
        await pc.close()
        if agent_ear.task is not None:
            agent_ear.task.cancel()
        handle.cancel()
        with contextlib.suppress(BaseException):
            await handle.result()
        live.close()


async def bench_desk(settings: Settings, calls: int) -> Report:
    report = Report(f"agents' desk: {calls} call(s), one after another",
                    series={"accept → agent heard": [], "agent → caller": [],
                            "caller → agent": []},
                    notes=["caller side: the pipeline's input/output (add the caller's own "
                           "transport); agent side: aiortc as the browser"])
    line = np.concatenate([np.zeros(RATE * 6, dtype=np.int16), trim_silence(
        await asyncio.to_thread(piper_line, settings, "I want to talk to an agent, please."))])
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-desk-") as tmp:
        redis_server = None if settings.redis_url else RedisServer(Path(tmp))
        if redis_server is not None:
            await asyncio.to_thread(redis_server.start)
        try:
            run = settings.model_copy(update={
                "database_url": f"sqlite:///{Path(tmp) / 'desk.db'}",
                "redis_url": settings.redis_url or (redis_server.url if redis_server else ""),
                "webrtc_ice_addresses": "127.0.0.1", "desk_enabled": True,
                "console_secure_cookies": False, "sip_record": False})
            async with services_ready(run) as ready:
                node = Node.create(ready, analytics=False, desk=True)
                try:
                    async with console(ready, node) as url:
                        client, csrf = await asyncio.to_thread(agent_client, url, node)
                        try:
                            for _ in range(calls):
                                await one_call(node, line, client, csrf, report)
                        finally:
                            client.close()
                finally:
                    await node.aclose()
        finally:
            if redis_server is not None:
                await asyncio.to_thread(redis_server.stop)
    return report


def piper_line(settings: Settings, text: str) -> np.ndarray:
    """``text`` in the node's Piper voice at the call rate."""
    from speech.tts import PiperTTS
    from switchboard.node import tts_config

    tts = PiperTTS.from_config(tts_config(settings))
    try:
        return np.concatenate(list(tts.synthesize_sync(text, RATE)))
    finally:
        tts.close()
