"""The call handle: commands given at any moment reach the call, transfers go through the
transport's control, a failed setup is reported to whoever waits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from switchboard.conversation.call import CallControlError, CallHandle, CallRequest
from switchboard.conversation.engines import BotMessage
from switchboard.conversation.pipeline import CallResult, ConversationPipeline
from switchboard.conversation.turn_detector import TurnTaking
from switchboard.simulate import CaptureSink, FileSource
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS, LoudnessDetector, MemoryRecorder

RATE = 8000


def script(message: str) -> list[BotMessage]:
    if message == "/call_start":
        return [BotMessage(text="Hello.")]
    if message.startswith("/inform:"):
        return [BotMessage(text="Connecting you."), BotMessage(custom={"handoff": {"queue": "x"}})]
    return [BotMessage(text="Pardon?")]


class Control:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.transfers: list[tuple[str, str]] = []

    async def transfer(self, call_id: str, target: str) -> bool:
        self.transfers.append((call_id, target))
        return self.accept


def start(*, seconds: float = 4.0, control: Control | None = None,
          handoff_target: str | None = None, fail_setup: bool = False) -> CallHandle:
    """A call on the real pipeline with fakes (what Node.start_call does, minus storage)."""
    source = FileSource(np.zeros(int(RATE * seconds), dtype=np.int16), RATE, realtime=False,
                        tail_s=1.0)
    handle = CallHandle(CallRequest(transport="test", source=source, sink=CaptureSink(RATE),
                                    control=control, handoff_target=handoff_target))
    source.call = handle

    async def run(call: CallHandle) -> CallResult:
        await asyncio.sleep(0.01)  # storing the call takes a moment
        if fail_setup:
            raise RuntimeError("database is down")
        pipeline = ConversationPipeline(
            call_id="call-1", source=source, sink=call.request.sink, stt=FakeSTT([]),
            tts=FakeTTS(), dialog=FakeDialog(script), vad=LoudnessDetector,
            recorder=MemoryRecorder(), turn_taking=TurnTaking(),
        )
        call.attach("call-1", pipeline)
        return await pipeline.run()

    handle.run(run)
    return handle


async def test_keys_and_listeners_given_before_the_call_runs_are_kept() -> None:
    handle = start()
    turns: list[str] = []
    handle.on_turn(lambda record: turns.append(record.text))
    for key in "12#":  # the call is not stored yet
        handle.keypad(key)
    result = await asyncio.wait_for(handle.result(), 20)

    assert "[keypad] 12" in turns and turns[0] == "Hello."
    assert result.reason == "handoff"  # the dialog handed off after the keypad entry


async def test_a_hangup_before_the_call_runs_ends_it_at_once() -> None:
    handle = start(seconds=30)
    handle.hang_up("agent_hangup")
    assert await handle.started() == "call-1"
    result = await asyncio.wait_for(handle.result(), 20)
    assert result.reason == "agent_hangup"


async def test_a_handoff_is_transferred_to_the_handoff_target() -> None:
    control = Control()
    handle = start(control=control, handoff_target="sip:desk@example.org")
    handle.keypad("7")
    handle.keypad("#")
    result = await asyncio.wait_for(handle.result(), 20)
    assert control.transfers == [("call-1", "sip:desk@example.org")]
    assert result.transferred is True


async def test_a_handoff_without_a_target_is_not_transferred() -> None:
    control = Control()
    handle = start(control=control)
    handle.keypad("7")
    handle.keypad("#")
    result = await asyncio.wait_for(handle.result(), 20)
    assert control.transfers == [] and result.transferred is None


async def test_an_asked_transfer_stops_the_bot_and_refers_the_caller() -> None:
    control = Control(accept=False)
    handle = start(seconds=30, control=control)
    await handle.started()
    handle.transfer("sip:supervisor@example.org")
    result = await asyncio.wait_for(handle.result(), 20)
    assert result.reason == "transferred" and result.transferred is False
    assert control.transfers == [("call-1", "sip:supervisor@example.org")]


async def test_a_transport_without_control_cannot_transfer() -> None:
    handle = start()
    with pytest.raises(CallControlError, match="test calls cannot be transferred"):
        handle.transfer("sip:desk@example.org")
    handle.hang_up()
    await handle.result()


async def test_a_failed_setup_reaches_everyone_waiting() -> None:
    handle = start(fail_setup=True)
    with pytest.raises(RuntimeError, match="database is down"):
        await handle.started()
    with pytest.raises(RuntimeError, match="database is down"):
        await handle.result()
