"""The conversation pipeline's turn-taking, with the real VAD and fake engines."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from switchboard.base.settings import Settings
from switchboard.conversation.audio import FRAME_MS
from switchboard.conversation.call import CallRequest
from switchboard.conversation.engines import BotMessage
from switchboard.node import Node
from switchboard.simulate import CaptureSink, FileSource, Simulation, simulate_call
from tests.support.audio_tools import espeak, silence
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS

RATE = 16000
GREETING = "Hi, you've reached Acme support. How can I help you today?"


def scripted(message: str) -> list[BotMessage]:
    if message == "/call_start":
        return [BotMessage(text=GREETING)]
    if message == "/no_input":
        return [BotMessage(text="Are you still there?")]
    if message == "/no_input_final":
        return [BotMessage(text="Goodbye."), BotMessage(custom={"hangup": True})]
    if message.startswith("/inform:"):
        return [BotMessage(text=f"Got it, order {message[8:]}.")]
    if "agent" in message:
        return [BotMessage(text="Connecting you now."),
                BotMessage(custom={"handoff": {"queue": "support"}})]
    return [BotMessage(text="Sure. What's your order number?")]


def make_node(database_url: str, stt: FakeSTT, dialog: FakeDialog, **overrides: object) -> Node:
    settings = Settings(database_url=database_url, **overrides)  # type: ignore[arg-type]
    return Node.create(settings, stt=stt, tts=FakeTTS(), dialog=dialog, analytics=False)


def onset_ms(pcm: np.ndarray, rate: int = RATE) -> int:
    """Media time of the first 20 ms frame with speech energy."""
    frame = rate * FRAME_MS // 1000
    for i in range(0, len(pcm) - frame, frame):
        if np.abs(pcm[i : i + frame].astype(np.int32)).mean() > 300:
            return i * 1000 // rate
    raise AssertionError("no speech in the caller audio")


def audible_until_ms(pcm: np.ndarray, after_ms: int = 0, rate: int = RATE) -> int:
    """End of the first stretch of bot audio that starts after ``after_ms``."""
    frame = rate * FRAME_MS // 1000
    playing = False
    for i in range(after_ms * rate // 1000, len(pcm) - frame, frame):
        loud = np.abs(pcm[i : i + frame].astype(np.int32)).mean() > 100
        if loud:
            playing = True
        elif playing:
            return i * 1000 // rate
    raise AssertionError("the bot never stopped speaking")


async def run(node: Node, caller: np.ndarray, tail_s: float = 1.0) -> Simulation:
    return await asyncio.wait_for(simulate_call(node, caller, RATE, tail_s=tail_s), 120)


async def test_greets_then_answers_a_caller_turn_and_stores_it(database_url: str, calls) -> None:
    stt = FakeSTT(["I'd like to check my order status"])
    dialog = FakeDialog(scripted)
    caller = np.concatenate([silence(4000), espeak("I'd like to check my order status"),
                             silence(500)])
    sim = await run(make_node(database_url, stt, dialog), caller)

    assert dialog.received == ["/call_start", "I'd like to check my order status"]
    assert [t.speaker for t in sim.result.turns] == ["bot", "caller", "bot"]
    answer = sim.result.turns[2]
    assert answer.text == "Sure. What's your order number?"
    assert answer.endpoint_ms is not None and answer.endpoint_ms >= 450
    assert answer.response_ms is not None and answer.response_ms >= answer.endpoint_ms
    assert answer.dialog_ms is not None and answer.tts_ms is not None
    assert sim.result.reason == "caller_hangup"
    stored = calls.get_call(sim.result.call_id)
    assert stored is not None and stored.status == "ended"
    assert [t.text for t in stored.turns] == [t.text for t in sim.result.turns]
    assert {"answered"} <= {e.kind for e in stored.events}


async def test_barge_in_stops_the_greeting_within_200_ms(database_url: str) -> None:
    long_greeting = "Hello. " + "This greeting goes on and on. " * 6
    stt = FakeSTT(["I need an agent"])

    def script(message: str) -> list[BotMessage]:
        return [BotMessage(text=long_greeting)] if message == "/call_start" else scripted(message)

    dialog = FakeDialog(script)
    caller = np.concatenate([silence(1500), espeak("I need an agent please"), silence(800)])
    sim = await run(make_node(database_url, stt, dialog), caller)

    speech_onset = onset_ms(caller)
    stopped = audible_until_ms(sim.bot_audio, after_ms=speech_onset - 100)
    assert speech_onset < stopped <= speech_onset + 200
    greeting, caller_turn = sim.result.turns[0], sim.result.turns[1]
    assert greeting.barge_in and caller_turn.barge_in
    assert sim.result.reason == "handoff"
    assert sim.result.handoff == {"queue": "support"}


async def test_silence_gets_a_reprompt_then_goodbye(database_url: str) -> None:
    dialog = FakeDialog(scripted)
    node = make_node(database_url, FakeSTT([]), dialog, no_input_timeout_s=2.0, max_reprompts=1)
    sim = await run(node, silence(500), tail_s=60)

    assert dialog.received == ["/call_start", "/no_input", "/no_input_final"]
    assert sim.result.reason == "bot_hangup"
    assert [t.text for t in sim.result.turns][-1] == "Goodbye."


async def test_dialog_outage_apologises_and_keeps_the_turn_log(
    database_url: str, calls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    stt = FakeSTT(["check my order"])
    dialog = FakeDialog(scripted, fail_after=1)
    node = make_node(database_url, stt, dialog)
    caller = np.concatenate([silence(4000), espeak("check my order"), silence(500)])
    sim = await run(node, caller)

    assert sim.result.status == "failed" and sim.result.reason == "dialog_unavailable"
    assert node.tts.spoken[-1] == node.settings.apology_text  # type: ignore[attr-defined]
    stored = calls.get_call(sim.result.call_id)
    assert [t.speaker for t in stored.turns] == ["bot", "caller", "bot"]
    assert stored.turns[1].text == "check my order"
    assert any(e.kind == "error" for e in stored.events)
    assert sim.result.call_id in caplog.text


async def test_keypad_digits_reach_the_dialog(database_url: str) -> None:
    dialog = FakeDialog(scripted)
    node = make_node(database_url, FakeSTT([]), dialog)
    source = FileSource(silence(6000), RATE, realtime=False, tail_s=1.0)
    sink = CaptureSink(RATE)
    handle = source.call = node.start_call(CallRequest(transport="sip", source=source, sink=sink))
    await handle.started()
    while handle.media_ms < 3000:
        await asyncio.sleep(0.001)
    for digit in "48213#":
        handle.keypad(digit)
    sim = Simulation(await asyncio.wait_for(handle.result(), 120), sink.audio(), RATE, 0.0)
    assert "/inform:48213" in dialog.received
    [keyed] = [t for t in sim.result.turns if t.text == "[keypad] 48213"]
    assert keyed.intent == "inform" and keyed.confidence == 1.0  # in the intent sequence too
    assert sim.result.turns[-1].text == "Got it, order 48213."


async def test_a_cough_pauses_the_bot_which_then_carries_on(database_url: str, calls) -> None:
    long_greeting = "Hello. " + "This greeting goes on and on. " * 4
    dialog = FakeDialog(
        lambda m: [BotMessage(text=long_greeting)] if m == "/call_start" else scripted(m)
    )
    node = make_node(database_url, FakeSTT([]), dialog, min_utterance_ms=400)
    cough = espeak("hey")[: RATE * 150 // 1000]
    caller = np.concatenate([silence(1500), cough, silence(9000)])
    sim = await run(node, caller)

    greeting = sim.result.turns[0]
    assert not greeting.barge_in
    assert [t.speaker for t in sim.result.turns] == ["bot"]
    expected_ms = len(long_greeting.split()) * 150
    assert len(np.flatnonzero(np.abs(sim.bot_audio) > 100)) * 1000 // RATE >= expected_ms * 0.95
    stored = calls.get_call(sim.result.call_id)
    assert "barge_in_ignored" in [e.kind for e in stored.events]


async def test_goodbye_is_not_interrupted_and_the_call_ends(database_url: str) -> None:
    def script(message: str) -> list[BotMessage]:
        if message == "/call_start":
            return [BotMessage(text="Hi.")]
        return [BotMessage(text="Thanks for calling. " * 5),
                BotMessage(custom={"hangup": True})]

    stt = FakeSTT(["bye", "wait"])
    dialog = FakeDialog(script)
    caller = np.concatenate([silence(1500), espeak("goodbye then"), silence(1500),
                             espeak("wait, one more thing"), silence(6000)])
    sim = await run(make_node(database_url, stt, dialog), caller)

    assert sim.result.reason == "bot_hangup"
    goodbye = sim.result.turns[-1]
    assert goodbye.speaker == "bot" and not goodbye.barge_in
    assert dialog.received == ["/call_start", "bye"]


async def test_the_bot_does_not_talk_over_a_caller_who_is_still_speaking(
    database_url: str,
) -> None:
    class SlowDialog(FakeDialog):
        async def send(self, conversation_id: str, text: str,
                       metadata: dict[str, object] | None = None) -> object:
            await asyncio.sleep(0.3)
            return await super().send(conversation_id, text, metadata)

    dialog = SlowDialog(scripted)
    stt = FakeSTT(["I'd like to check", "my order status please"])
    caller = np.concatenate([silence(4000), espeak("I'd like to check"), silence(650),
                             espeak("my order status please, it is late"), silence(1500)])
    sim = await asyncio.wait_for(
        simulate_call(make_node(database_url, stt, dialog), caller, RATE, realtime=True), 60
    )
    replies = [t for t in sim.result.turns if t.speaker == "bot"][1:]
    assert replies[0].barge_in, "the first answer started while the caller spoke again"
    assert not replies[-1].barge_in


async def test_a_reconnecting_caller_continues_the_same_conversation(database_url: str) -> None:
    dialog = FakeDialog(scripted)
    node = make_node(database_url, FakeSTT(["four eight two one three"]), dialog)
    heard: list[str] = []
    caller = np.concatenate([silence(500), espeak("four eight two one three"), silence(500)])
    source = FileSource(caller, RATE, realtime=False, tail_s=1.0)
    handle = source.call = node.start_call(CallRequest(
        transport="webrtc", source=source, sink=CaptureSink(RATE), conversation_id="conv-42",
        greet=False))
    handle.on_turn(lambda t: heard.append(f"{t.speaker}: {t.text}"))
    sim = await asyncio.wait_for(handle.result(), 60)

    assert dialog.received == ["four eight two one three"]
    assert dialog.senders == ["conv-42"]
    assert heard == ["caller: four eight two one three", "bot: Sure. What's your order number?"]
    assert sim.reason == "caller_hangup"

