"""Every log line written while a call runs names the call, in its tasks and threads."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from switchboard.base.logs import CallContext
from switchboard.base.settings import Settings
from switchboard.node import Node
from switchboard.simulate import simulate_call
from tests.support.audio_tools import espeak, silence
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS
from tests.switchboard.test_node_calls import scripted


async def test_the_lines_of_a_call_name_it(database_url: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(CallContext())
    node = Node.create(Settings(database_url=database_url), stt=FakeSTT(["check my order"]),
                       tts=FakeTTS(), dialog=FakeDialog(scripted), analytics=False)
    caller = np.concatenate([silence(4000), espeak("check my order"), silence(1500)])
    try:
        with caplog.at_level(logging.INFO):
            sim = await simulate_call(node, caller, 16000)
            logging.getLogger("outside").info("after the call")
    finally:
        await node.aclose()
    of_call = [r for r in caplog.records if r.name.startswith("switchboard")
               and sim.result.call_id in r.getMessage()]
    assert len(of_call) >= 3  # started, caller said, bot said, ended
    assert all(getattr(r, "call", None) == f" [call {sim.result.call_id}]" for r in of_call)
    [after] = [r for r in caplog.records if r.name == "outside"]
    assert getattr(after, "call", None) == ""
