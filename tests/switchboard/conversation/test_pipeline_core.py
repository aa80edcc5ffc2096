"""The pipeline on its own, faster than real time: fake engines, a loudness detector and an
in-memory recorder — no model, no database, no transport."""

from __future__ import annotations

import asyncio

import numpy as np

from switchboard.conversation.engines import BotMessage, Priority
from switchboard.conversation.pipeline import CallResult, ConversationPipeline
from switchboard.conversation.turn_detector import TurnTaking
from switchboard.simulate import CaptureSink, FileSource
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS, LoudnessDetector, MemoryRecorder

RATE = 8000


def tone(ms: int) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return (np.sin(2 * np.pi * 440 * t) * 6000).astype(np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


def script(message: str) -> list[BotMessage]:
    if message == "/call_start":
        return [BotMessage(text="Hello there.")]
    if message.startswith("/inform:"):
        return [BotMessage(text=f"Order {message[8:]}."), BotMessage(custom={"hangup": True})]
    if message == "bye":
        return [BotMessage(text="Goodbye."), BotMessage(custom={"hangup": True})]
    if message == "lost":  # what Rasa answers when a custom action failed: nothing
        return []
    return [BotMessage(text="Tell me more.")]


async def call(caller: np.ndarray, stt: FakeSTT, dialog: FakeDialog, recorder: MemoryRecorder,
               *, keys: str = "", tail_s: float = 2.0) -> CallResult:
    source = FileSource(caller, RATE, realtime=False, tail_s=tail_s)
    pipeline = ConversationPipeline(
        call_id="c1", source=source, sink=CaptureSink(RATE), stt=stt, tts=FakeTTS(),
        dialog=dialog, vad=LoudnessDetector, recorder=recorder,
        turn_taking=TurnTaking(no_input_timeout_s=30, max_call_s=60),
    )
    source.call = pipeline
    for key in keys:  # pressed before the call even runs: queued, never dropped
        pipeline.keypad(key)
    return await asyncio.wait_for(pipeline.run(), 30)


async def test_greets_answers_and_hangs_up_with_every_turn_recorded() -> None:
    recorder = MemoryRecorder()
    dialog = FakeDialog(script)
    stt = FakeSTT(["my order", "bye"])
    caller = np.concatenate([silence(3000), tone(800), silence(3000), tone(600), silence(500)])
    result = await call(caller, stt, dialog, recorder)

    # each turn was transcribed once, speculatively at the pause, and that result was used
    assert stt.priorities == [Priority.SPECULATIVE, Priority.SPECULATIVE]
    assert dialog.received == ["/call_start", "my order", "bye"]
    assert [(t.speaker, t.text) for t in recorder.turns] == [
        ("bot", "Hello there."), ("caller", "my order"), ("bot", "Tell me more."),
        ("caller", "bye"), ("bot", "Goodbye.")]
    assert result.reason == "bot_hangup" and recorder.ended == {
        "reason": "bot_hangup", "status": "ended", "handoff_target": None}
    answer = recorder.turns[2]
    assert answer.response_ms is not None and answer.endpoint_ms is not None
    assert recorder.kinds()[0] == "answered"


async def test_keys_pressed_before_the_pipeline_runs_reach_the_dialog() -> None:
    recorder = MemoryRecorder()
    dialog = FakeDialog(script)
    result = await call(silence(4000), FakeSTT([]), dialog, recorder, keys="48213#")

    assert "/inform:48213" in dialog.received
    assert ("caller", "[keypad] 48213") in [(t.speaker, t.text) for t in recorder.turns]
    assert result.reason == "bot_hangup"


async def test_a_dead_dialog_gets_an_apology_and_a_failed_call() -> None:
    recorder = MemoryRecorder()
    dialog = FakeDialog(script, fail_after=1)
    caller = np.concatenate([silence(3000), tone(800), silence(1500)])
    result = await call(caller, FakeSTT(["my order"]), dialog, recorder)

    assert (result.reason, result.status) == ("dialog_unavailable", "failed")
    assert [t.speaker for t in recorder.turns] == ["bot", "caller", "bot"]
    assert recorder.turns[-1].text == TurnTaking().apology_text
    assert ("error", {"stage": "dialog", "error": "Rasa at http://127.0.0.1:1 is not "
                      "reachable: refused"}) in recorder.events


async def test_the_caller_hanging_up_ends_the_call() -> None:
    recorder = MemoryRecorder()
    result = await call(silence(2000), FakeSTT([]), FakeDialog(script), recorder, tail_s=0.2)
    assert result.reason == "caller_hangup"


async def test_the_answer_the_bot_asked_for_travels_with_the_next_turn() -> None:
    """After a reply that asks for the order number, the caller's next turn is transcribed
    knowing it (speculatively and finally); after the answer, no more."""
    stt = FakeSTT(["check my order", "four eight two one three", "bye"])
    dialog = FakeDialog(script, expects=lambda m: "order_number" if m == "check my order"
                        else None)
    caller = np.concatenate([silence(1500), tone(600), silence(1500), tone(600),
                             silence(1500), tone(600), silence(1000)])

    await call(caller, stt, dialog, MemoryRecorder())

    assert stt.expected == [None, "order_number", None]  # one answered request per turn
    assert dialog.received[:4] == ["/call_start", "check my order",
                                   "four eight two one three", "bye"]


class BusySTT(FakeSTT):
    """A busy speech service: speculative requests wait a long time in its queue (behind
    other calls' final turns), final ones are served at once."""

    def delay_s(self, priority: Priority) -> float:
        return 20.0 if priority == Priority.SPECULATIVE else 0.01


async def test_a_speculative_guess_stuck_in_a_busy_queue_does_not_hold_the_turn() -> None:
    stt = BusySTT(["bye"])
    dialog = FakeDialog(script)
    caller = np.concatenate([silence(1500), tone(600), silence(1500)])

    result = await call(caller, stt, dialog, MemoryRecorder(), tail_s=2.0)

    assert dialog.received == ["/call_start", "bye"] and result.reason == "bot_hangup"
    assert stt.priorities == [Priority.FINAL]  # the final request answered the turn
    assert stt.cancelled == [Priority.SPECULATIVE]  # and the stuck guess was dropped


async def test_the_call_frees_its_speech_detector_when_it_ends() -> None:
    """The detector's model (Silero's onnxruntime session, megabytes the garbage collector
    does not see) is freed as the call ends, not whenever a full collection comes."""
    made: list[LoudnessDetector] = []

    def vad(rate: int, threshold: float) -> LoudnessDetector:
        made.append(LoudnessDetector(rate, threshold))
        return made[-1]

    source = FileSource(np.concatenate([silence(3000), tone(600), silence(3000)]), RATE,
                        realtime=False, tail_s=1.0)
    pipeline = ConversationPipeline(
        call_id="c2", source=source, sink=CaptureSink(RATE), stt=FakeSTT(["bye"]),
        tts=FakeTTS(), dialog=FakeDialog(script), vad=vad, recorder=MemoryRecorder(),
        turn_taking=TurnTaking(no_input_timeout_s=30, max_call_s=60))
    source.call = pipeline
    assert made and not any(d.closed for d in made)
    await asyncio.wait_for(pipeline.run(), 30)
    assert made and all(d.closed for d in made)


async def test_a_turn_the_dialog_answers_with_nothing_gets_a_retry_prompt_not_silence() -> None:
    recorder = MemoryRecorder()
    stt = FakeSTT(["lost", "bye"])
    caller = np.concatenate([silence(3000), tone(800), silence(4000), tone(600), silence(500)])
    result = await call(caller, stt, FakeDialog(script), recorder)

    assert [(t.speaker, t.text) for t in recorder.turns] == [
        ("bot", "Hello there."), ("caller", "lost"), ("bot", TurnTaking().empty_reply_text),
        ("caller", "bye"), ("bot", "Goodbye.")]
    assert "empty_reply" in recorder.kinds() and result.reason == "bot_hangup"
