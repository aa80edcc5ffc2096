"""Whole calls through the real pipeline: Silero VAD, Whisper, the Rasa server, Piper.

What the bot said is checked by transcribing the audio the caller heard."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.node import Node
from switchboard.simulate import Simulation, simulate_call, write_outputs
from tests.support.audio_tools import espeak, normalize_digits, piper_speech, silence

pytestmark = pytest.mark.integration
RATE = 16000
GREETING_GAP_MS = 7000
REPLY_GAP_MS = 6000


def caller_audio(parts: list[np.ndarray | int]) -> np.ndarray:
    """Utterances and silences (ints, in ms) one after another."""
    return np.concatenate([silence(p, RATE) if isinstance(p, int) else p for p in parts])


async def call(node: Node, caller: np.ndarray, artifacts: Path, name: str) -> Simulation:
    sim = await asyncio.wait_for(simulate_call(node, caller, RATE), 300)
    write_outputs(sim, artifacts / f"{name}-heard.wav", artifacts / f"{name}.json")
    return sim


def heard(stt: WhisperSTT, sim: Simulation) -> str:
    """What the caller heard, transcribed by Whisper, lower case."""
    return stt.transcribe_sync(sim.bot_audio, sim.sample_rate).text.lower()


async def test_order_status_by_spoken_digits(
    node: Node, stt: WhisperSTT, tts: PiperTTS, artifacts: Path, calls
) -> None:
    caller = caller_audio([
        GREETING_GAP_MS, piper_speech(tts, "Hi, I'd like to check my order status.", RATE),
        REPLY_GAP_MS, piper_speech(tts, "four eight two one three", RATE), 1000,
    ])
    sim = await call(node, caller, artifacts, "order-status")
    text = heard(stt, sim)

    assert "order number" in text
    assert "48213" in normalize_digits(text)
    assert "shipped" in text
    bot_turns = [t for t in sim.result.turns if t.speaker == "bot"]
    assert len(bot_turns) == 3
    assert all(t.response_ms is not None for t in bot_turns[1:])
    stored = calls.get_call(sim.result.call_id)
    assert stored is not None and len(stored.turns) == len(sim.result.turns)
    said = [t for t in stored.turns if t.speaker == "caller"]
    assert said[0].intent == "check_order_status"
    assert said[1].intent == "inform"  # the order number, not the request before it


async def test_handoff_request_is_handed_off(
    node: Node, stt: WhisperSTT, artifacts: Path
) -> None:
    caller = caller_audio([GREETING_GAP_MS, espeak("I want to talk to a human agent.", RATE), 500])
    sim = await call(node, caller, artifacts, "handoff")

    assert sim.result.reason == "handoff"
    assert sim.result.handoff is not None and sim.result.handoff.get("queue")
    assert "agent" in heard(stt, sim)


async def test_goodbye_ends_the_call(
    node: Node, stt: WhisperSTT, tts: PiperTTS, artifacts: Path
) -> None:
    caller = caller_audio([GREETING_GAP_MS, piper_speech(tts, "That's all, goodbye.", RATE), 500])
    sim = await call(node, caller, artifacts, "goodbye")

    assert sim.result.reason == "bot_hangup"
    assert "bye" in heard(stt, sim)


async def test_caller_speaking_over_the_greeting_stops_it(
    node: Node, tts: PiperTTS, artifacts: Path
) -> None:
    onset_ms = 1200
    utterance = piper_speech(tts, "I want to speak to an agent.", RATE)
    caller = caller_audio([onset_ms, utterance, 500])
    sim = await call(node, caller, artifacts, "barge-in")

    greeting = sim.result.turns[0]
    assert greeting.speaker == "bot" and greeting.barge_in
    assert sim.result.turns[1].speaker == "caller" and sim.result.turns[1].barge_in
    assert sim.result.reason == "handoff"
    # The greeting was playing at the onset and is silent 200 ms later, while the caller talks.
    speaking_end_ms = onset_ms + len(utterance) * 1000 // RATE
    before = sim.bot_audio[(onset_ms - 1000) * RATE // 1000 : onset_ms * RATE // 1000]
    after = sim.bot_audio[(onset_ms + 200) * RATE // 1000 : speaking_end_ms * RATE // 1000]
    assert np.abs(before.astype(np.int32)).mean() > 200
    assert np.abs(after).max() == 0


class RasaProxy:
    """A TCP relay in front of the Rasa server that dies, like a dying network, when the
    caller's first turn is sent (the second webhook request: the greeting went through)."""

    WEBHOOK = b"POST /webhooks/rest/webhook"

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.webhooks = 0
        self.cut_done = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_done.is_set():
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       requests: bool) -> None:
            try:
                while data := await src.read(65536):
                    if requests:
                        self.webhooks += data.count(self.WEBHOOK)
                        if self.webhooks >= 2:
                            self.cut()
                            return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def cut(self) -> None:
        assert self.server is not None
        self.cut_done.set()
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()


async def test_rasa_dying_mid_call_gets_an_apology_and_keeps_the_log(
    node: Node, stt: WhisperSTT, tts: PiperTTS, rasa_server: object, artifacts: Path,
    calls, caplog: pytest.LogCaptureFixture,
) -> None:
    from dialog.rasa_client import RasaClient

    caplog.set_level(logging.ERROR)
    proxy = RasaProxy(int(rasa_server.url.rsplit(":", 1)[1]))  # type: ignore[attr-defined]
    port = await proxy.start()
    node.dialog = RasaClient(f"http://127.0.0.1:{port}", timeout_s=3)
    caller = caller_audio([
        GREETING_GAP_MS, piper_speech(tts, "I have a question about my bill.", RATE), 1000,
    ])

    sim = await call(node, caller, artifacts, "rasa-outage")
    await node.dialog.aclose()
    assert proxy.cut_done.is_set()

    assert sim.result.status == "failed" and sim.result.reason == "dialog_unavailable"
    assert "sorry" in heard(stt, sim)
    stored = calls.get_call(sim.result.call_id)
    assert [t.speaker for t in stored.turns] == ["bot", "caller", "bot"]
    assert "bill" in stored.turns[1].text.lower()
    assert any(e.kind == "error" for e in stored.events)
    assert sim.result.call_id in caplog.text
    log = json.loads((artifacts / "rasa-outage.json").read_text())
    assert log["call_id"] == sim.result.call_id
    assert (log["status"], log["end_reason"]) == ("failed", "dialog_unavailable")
    assert [t["speaker"] for t in log["turns"]] == ["bot", "caller", "bot"]
    assert [t["text"] for t in log["turns"]] == [t.text for t in sim.result.turns]
    assert "bill" in log["turns"][1]["text"].lower()
