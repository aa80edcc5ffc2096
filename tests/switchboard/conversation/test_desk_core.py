"""The handoff queue and the agent's bridge in the pipeline, faster than real time: a desk
in memory and a scripted agent leg (the Redis desk and the browser leg are exercised in
tests/admin and tests/integration)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from switchboard.conversation.desk import AgentLeg, QueuePolicy, QueueStatus
from switchboard.conversation.engines import BotMessage
from switchboard.conversation.pipeline import CallResult, ConversationPipeline
from switchboard.conversation.turn_detector import TurnTaking
from switchboard.conversation.turns import TurnRecord
from switchboard.simulate import CaptureSink, FileSource
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS, LoudnessDetector, MemoryRecorder

RATE = 8000
FRAME = RATE // 50


def tone(ms: int, freq: float = 440) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return (np.sin(2 * np.pi * freq * t) * 6000).astype(np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


def script(message: str) -> list[BotMessage]:
    if message == "/call_start":
        return [BotMessage(text="Hello there.")]
    if message == "a person please":
        return [BotMessage(text="Connecting you."),
                BotMessage(custom={"handoff": {"queue": "agents"}})]
    if message == "bye":
        return [BotMessage(text="Goodbye."), BotMessage(custom={"hangup": True})]
    return [BotMessage(text="Tell me more.")]


class ScriptedLeg:
    """An agent's leg: says ``speech`` (a tone) after ``speak_after`` frames, asks
    ``request`` after ``request_after`` frames, or goes away after ``gone_after``."""

    def __init__(self, agent: str, *, mode: str = "talk", speak_after: int = 10,
                 speech_ms: int = 600, request: str | None = None, request_after: int = 200,
                 gone_after: int | None = None) -> None:
        self.agent, self.mode = agent, mode
        self.heard: list[np.ndarray] = []
        self.speech = tone(speech_ms, 300)
        self.speak_after, self.request_after, self.gone_after = (
            speak_after, request_after, gone_after)
        self.requested = request
        self.frames = 0
        self.closed = False

    def hear(self, frame: np.ndarray) -> None:
        self.heard.append(frame)

    def take(self) -> np.ndarray | None:
        self.frames += 1
        if self.gone_after is not None and self.frames > self.gone_after:
            return None
        start = (self.frames - self.speak_after) * FRAME
        if 0 <= start < len(self.speech):
            return self.speech[start : start + FRAME]
        return np.zeros(FRAME, dtype=np.int16)

    def request(self) -> str | None:
        if self.requested is not None and self.frames >= self.request_after:
            asked, self.requested = self.requested, None
            return asked
        return None

    def close(self) -> None:
        self.closed = True


class MemoryDesk:
    """The desk's queue in memory: an agent claims the call after ``claim_after`` polls
    (and their leg connects), or nobody does."""

    def __init__(self, policy: QueuePolicy, *, claim_after: int | None = None,
                 leg: ScriptedLeg | None = None) -> None:
        self.policy = policy
        self.claim_after, self.leg = claim_after, leg
        self.polls = 0
        self.queue: list[str] = []
        self.claimed: dict[str, str] = {}
        self.left: list[str] = []
        self.released_calls: list[str] = []
        self.context: list[TurnRecord] = []
        self.on_leg: Callable[[AgentLeg], None] | None = None
        self.detached = False

    async def enqueue(self, call_id: str, turns: list[TurnRecord]) -> int:
        self.queue.append(call_id)
        self.context = turns
        return len(self.queue)

    async def status(self, call_id: str) -> QueueStatus:
        self.polls += 1
        if (self.claim_after is not None and self.polls >= self.claim_after
                and call_id in self.queue):
            self.queue.remove(call_id)
            self.claimed[call_id] = "ann"
            if self.leg is not None and self.on_leg is not None:
                asyncio.get_running_loop().call_soon(self.on_leg, self.leg)
        position = self.queue.index(call_id) + 1 if call_id in self.queue else None
        return QueueStatus(position, self.claimed.get(call_id))

    async def give_up(self, call_id: str) -> str | None:
        if call_id in self.claimed:
            return self.claimed[call_id]
        self.queue.remove(call_id)
        self.claimed[call_id] = "~fallback"
        return None

    async def leave(self, call_id: str) -> None:
        self.left.append(call_id)
        if call_id in self.queue:
            self.queue.remove(call_id)

    def released(self, call_id: str) -> None:
        self.released_calls.append(call_id)

    def music(self, rate: int) -> np.ndarray:
        return tone(1000, 523)

    def attach(self, call_id: str, rate: int,
               on_leg: Callable[[AgentLeg], None]) -> Callable[[], None]:
        self.on_leg = on_leg

        def detach() -> None:
            self.detached = True

        return detach


async def call(caller: np.ndarray, stt: FakeSTT, dialog: FakeDialog, recorder: MemoryRecorder,
               desk: MemoryDesk, *, tail_s: float = 2.0, no_input_s: float = 30,
               source: type[FileSource] = FileSource) -> tuple[CallResult, CaptureSink]:
    feed = source(caller, RATE, realtime=False, tail_s=tail_s)
    sink = CaptureSink(RATE)
    pipeline = ConversationPipeline(
        call_id="c1", source=feed, sink=sink, stt=stt, tts=FakeTTS(),
        dialog=dialog, vad=LoudnessDetector, recorder=recorder,
        turn_taking=TurnTaking(no_input_timeout_s=no_input_s, max_call_s=120), desk=desk,
    )
    feed.call = pipeline
    return await asyncio.wait_for(pipeline.run(), 30), sink


def spoken(recorder: MemoryRecorder) -> list[tuple[str, str]]:
    return [(t.speaker, t.text) for t in recorder.turns]


def events(recorder: MemoryRecorder, kind: str) -> list[dict[str, object]]:
    return [data for k, data in recorder.events if k == kind]


def music_frames(sink: CaptureSink) -> int:
    """Frames of the hold music (523 Hz) the caller heard."""
    count = 0
    for frame in sink.frames:
        if not frame.any():
            continue
        spectrum = np.abs(np.fft.rfft(frame.astype(np.float64)))
        if abs(int(np.argmax(spectrum)) * RATE / FRAME - 523) < 60:
            count += 1
    return count


async def test_an_agent_takes_the_call_from_the_queue_and_both_sides_are_transcribed() -> None:
    leg = ScriptedLeg("ann", speak_after=20, request="hangup", request_after=400)
    desk = MemoryDesk(QueuePolicy(poll_s=0.5), claim_after=6, leg=leg)
    recorder = MemoryRecorder()
    dialog = FakeDialog(script)
    stt = FakeSTT(["a person please", "hi this is ann", "my order is late"])
    caller = np.concatenate([silence(1000), tone(700), silence(8000), tone(500),
                             silence(1500)])

    result, sink = await call(caller, stt, dialog, recorder, desk, tail_s=10, no_input_s=3)

    assert result.reason == "agent_hangup"
    # the bot stopped: no reprompt while the agent and the caller talk (or are quiet)
    assert dialog.received == ["/call_start", "a person please"]
    said = spoken(recorder)
    assert said[:4] == [("bot", "Hello there."), ("caller", "a person please"),
                        ("bot", "Connecting you."),
                        ("bot", "All our agents are busy right now. You are number 1 in "
                                "the queue.")]
    assert ("agent", "hi this is ann") in said and ("caller", "my order is late") in said
    assert said.index(("agent", "hi this is ann")) < said.index(("caller", "my order is late"))
    agent_turn = next(t for t in recorder.turns if t.speaker == "agent")
    assert agent_turn.started_at > recorder.turns[3].ended_at  # timed on the call's clock
    assert [t.speaker for t in desk.context] == ["bot", "caller", "bot"]  # context so far
    assert music_frames(sink) > 25  # the caller heard hold music while waiting
    assert events(recorder, "queued") == [{"position": 1}]
    assert events(recorder, "queue_left")[0]["outcome"] == "agent"
    assert events(recorder, "agent_joined") == [{"agent": "ann"}]
    heard_by_agent = np.concatenate(leg.heard)
    assert np.abs(heard_by_agent).max() > 3000  # the agent heard the caller
    caller_heard = sink.audio()
    assert np.abs(caller_heard[-len(heard_by_agent):]).max() > 3000  # and the caller, ann
    assert leg.closed and desk.detached


async def test_nobody_answers_and_the_bot_carries_on() -> None:
    desk = MemoryDesk(QueuePolicy(poll_s=0.5, timeout_s=0.0, fallback="bot"))
    recorder = MemoryRecorder()
    dialog = FakeDialog(script)
    stt = FakeSTT(["a person please", "bye"])
    caller = np.concatenate([silence(1000), tone(700), silence(9000), tone(500),
                             silence(1500)])

    result, _ = await call(caller, stt, dialog, recorder, desk)

    assert result.reason == "bot_hangup" and result.handoff is None
    assert dialog.received == ["/call_start", "a person please", "bye"]
    assert ("bot", QueuePolicy().fallback_text) in spoken(recorder)
    assert desk.claimed == {"c1": "~fallback"}
    assert events(recorder, "queue_left")[0]["outcome"] == "fallback"


async def test_nobody_answers_and_the_call_is_transferred() -> None:
    desk = MemoryDesk(QueuePolicy(poll_s=0.5, timeout_s=0.0, fallback="transfer"))
    recorder = MemoryRecorder()
    caller = np.concatenate([silence(1000), tone(700), silence(6000)])

    result, _ = await call(caller, FakeSTT(["a person please"]), FakeDialog(script), recorder,
                           desk)

    assert result.reason == "handoff" and result.handoff == {"queue": "agents"}
    assert spoken(recorder)[-1] == ("bot", QueuePolicy().transfer_text)


async def test_the_agents_line_drops_and_the_bot_takes_the_caller_back() -> None:
    leg = ScriptedLeg("ann", speak_after=1000, gone_after=40)
    desk = MemoryDesk(QueuePolicy(poll_s=0.5), claim_after=2, leg=leg)
    recorder = MemoryRecorder()
    dialog = FakeDialog(script)
    stt = FakeSTT(["a person please", "bye"])
    caller = np.concatenate([silence(1000), tone(700), silence(12000), tone(500),
                             silence(1500)])

    result, _ = await call(caller, stt, dialog, recorder, desk)

    assert ("bot", QueuePolicy().agent_lost_text) in spoken(recorder)
    assert result.reason == "bot_hangup"  # the bot answered "bye" after taking it back
    assert dialog.received == ["/call_start", "a person please", "bye"]
    assert events(recorder, "agent_request") == [{"agent": "ann", "request": "gone"}]
    assert desk.released_calls == ["c1"]


class HangingUpSource(FileSource):
    """The caller hangs up once their audio has played, whatever the call is doing."""

    async def read(self) -> np.ndarray | None:
        if self._pos >= len(self._pcm):
            return None
        return await super().read()


async def test_a_caller_who_hangs_up_in_the_queue_leaves_it() -> None:
    desk = MemoryDesk(QueuePolicy(poll_s=0.5))
    recorder = MemoryRecorder()
    caller = np.concatenate([silence(1000), tone(700), silence(6000)])

    result, _ = await call(caller, FakeSTT(["a person please"]), FakeDialog(script),
                           recorder, desk, source=HangingUpSource)

    assert result.reason == "caller_hangup"
    assert desk.left == ["c1"] and desk.queue == []
    assert events(recorder, "queue_left")[0]["outcome"] == "abandoned"


def test_the_bridge_gives_each_leg_what_it_may_hear() -> None:
    """The agent hears the caller and a supervisor who barged in; the caller hears the agent
    and that supervisor (never the bot); a supervisor listening in hears both sides and is
    never heard, whatever their leg carries."""
    from switchboard.conversation.bridge import Bridge
    from switchboard.conversation.turn_detector import TurnDetector

    emitted: list[object] = []
    bridge = Bridge(lambda: TurnDetector.create(RATE, LoudnessDetector(RATE), TurnTaking()),
                    emitted.append)
    agent, barge, listen = (ScriptedLeg("ann", speak_after=0, speech_ms=1000),
                            ScriptedLeg("sue", mode="barge", speak_after=0, speech_ms=1000),
                            ScriptedLeg("max", mode="listen", speak_after=0, speech_ms=1000))
    assert not bridge
    for leg in (agent, barge, listen):
        bridge.join(leg, 0)
    caller = np.full(FRAME, 1000, dtype=np.int16)
    bot = np.full(FRAME, 7000, dtype=np.int16)

    heard = bridge.exchange(caller, bot, 20)

    ann, sue = agent.speech[:FRAME].astype(np.int32), barge.speech[:FRAME].astype(np.int32)
    assert heard is not None and np.array_equal(heard, ann + sue)  # no bot, no listener
    assert np.array_equal(agent.heard[0], caller + sue)
    assert np.array_equal(listen.heard[0], caller + ann + sue)
    assert barge.heard and not emitted

    bridge.release()  # the agent leaves: the caller hears the bot again (and sue)
    assert agent.closed
    heard = bridge.exchange(caller, bot, 40)
    assert heard is not None and np.array_equal(heard, bot + barge.speech[FRAME:2 * FRAME])
