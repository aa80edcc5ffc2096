"""The node's metrics: a call moves the counters and histograms, /metrics serves them
without phone numbers or call ids."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from switchboard.base.metrics import exposition
from switchboard.base.settings import Settings
from switchboard.node import Node
from switchboard.simulate import simulate_call
from tests.support.audio_tools import espeak, silence
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS
from tests.switchboard.test_node_calls import scripted


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_call_is_counted_and_its_stages_timed(database_url: str) -> None:
    ended = value("switchboard_calls_ended_total", transport="simulate", reason="caller_hangup")
    dialog_turns = value("switchboard_turn_stage_seconds_count", stage="dialog")
    endpoints = value("switchboard_turn_stage_seconds_count", stage="endpoint")
    node = Node.create(Settings(database_url=database_url), stt=FakeSTT(["check my order"]),
                       tts=FakeTTS(), dialog=FakeDialog(scripted), analytics=False)
    caller = np.concatenate([silence(4000), espeak("check my order"), silence(1500)])
    try:
        sim = await simulate_call(node, caller, 16000, caller="sip:5551234@example.com")
    finally:
        await node.aclose()

    assert sim.result.reason == "caller_hangup"
    assert value("switchboard_calls_ended_total", transport="simulate",
                 reason="caller_hangup") == ended + 1
    assert value("switchboard_calls_active", transport="simulate") == 0
    # the greeting and the answer went through the dialog; only the answer had an endpoint
    assert value("switchboard_turn_stage_seconds_count", stage="dialog") == dialog_turns + 2
    assert value("switchboard_turn_stage_seconds_count", stage="endpoint") == endpoints + 1
    text, content_type = exposition()
    assert content_type.startswith("text/plain")
    assert b"switchboard_turn_stage_seconds_bucket" in text
    assert b"5551234" not in text and sim.result.call_id.encode() not in text
