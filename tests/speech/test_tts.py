"""Piper speaks sentence by sentence, at any rate, and stops when its listener goes away."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from speech.tts import PiperTTS
from switchboard.base.settings import Settings
from switchboard.conversation.engines import TextToSpeech
from switchboard.node import tts_config

TWO_SENTENCES = "Thanks for calling. Your order shipped yesterday."
MANY_SENTENCES = " ".join(f"This is sentence number {n}." for n in range(1, 9))
FIRST_CHUNK_TIMEOUT_S = 30.0


def count_sentences(monkeypatch: pytest.MonkeyPatch, tts: PiperTTS) -> list[int]:
    """Record each sentence the engine synthesizes (the producer's progress)."""
    synthesized: list[int] = []
    real = tts.synthesize_sync

    def counting(text: str, sample_rate: int, skip: int = 0) -> Iterator[np.ndarray]:
        for pcm in real(text, sample_rate, skip):
            synthesized.append(len(pcm))
            yield pcm

    monkeypatch.setattr(tts, "synthesize_sync", counting)
    return synthesized


async def collect(engine: TextToSpeech, text: str, rate: int) -> list[np.ndarray]:
    return [chunk async for chunk in engine.stream(text, rate)]


async def test_each_sentence_is_its_own_chunk(tts: PiperTTS) -> None:
    chunks = await collect(tts, TWO_SENTENCES, 16000)

    assert len(chunks) >= 2
    assert all(chunk.dtype == np.int16 and chunk.ndim == 1 and chunk.size for chunk in chunks)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000])
async def test_chunks_come_at_the_requested_rate(tts: PiperTTS, rate: int) -> None:
    native = sum(len(c) for c in tts.synthesize_sync(TWO_SENTENCES, tts.native_rate))

    chunks = await collect(tts, TWO_SENTENCES, rate)

    duration = sum(len(c) for c in chunks) / rate
    assert duration == pytest.approx(native / tts.native_rate, rel=0.15)  # Piper varies a bit


async def test_the_first_sentence_arrives_before_the_rest_is_synthesized(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthesized = count_sentences(monkeypatch, tts)
    counting = tts.synthesize_sync
    first_heard = threading.Event()

    def held_after_the_first(text: str, sample_rate: int, skip: int = 0
                             ) -> Iterator[np.ndarray]:
        """The rest waits until the listener has the first chunk (or 30 s went by)."""
        for pcm in counting(text, sample_rate, skip):
            yield pcm
            first_heard.wait(FIRST_CHUNK_TIMEOUT_S)

    monkeypatch.setattr(tts, "synthesize_sync", held_after_the_first)
    stream = tts.stream("Sure. " + MANY_SENTENCES, 8000)
    try:
        await asyncio.wait_for(anext(stream), FIRST_CHUNK_TIMEOUT_S)
        assert len(synthesized) == 1
    finally:
        first_heard.set()
    rest = [chunk async for chunk in stream]

    assert len(rest) == 8 and len(synthesized) == 9


@pytest.mark.parametrize("text", ["", "   ", "\n"])
async def test_empty_text_gives_no_chunks(tts: PiperTTS, text: str) -> None:
    assert await collect(tts, text, 8000) == []


async def test_closing_the_stream_stops_synthesis_after_the_current_sentence(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthesized = count_sentences(monkeypatch, tts)
    stream = tts.stream(MANY_SENTENCES, 8000)

    await anext(stream)
    await stream.aclose()
    await collect(tts, "Okay.", 8000)

    assert len(synthesized) <= 3 + 1


async def test_cancelling_the_listener_stops_synthesis(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthesized = count_sentences(monkeypatch, tts)
    first_chunk = asyncio.Event()

    async def listen() -> None:
        async for _ in tts.stream(MANY_SENTENCES, 8000):
            first_chunk.set()

    listener = asyncio.create_task(listen())
    await first_chunk.wait()
    listener.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listener
    await collect(tts, "Okay.", 8000)

    assert len(synthesized) <= 3 + 1


async def test_a_synthesis_error_reaches_the_listener(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str, sample_rate: int, skip: int = 0) -> Iterator[np.ndarray]:
        raise RuntimeError("voice exploded")

    monkeypatch.setattr(tts, "synthesize_sync", broken)

    with pytest.raises(RuntimeError, match="voice exploded"):
        await collect(tts, "Hello.", 8000)


def test_the_node_builds_piper_from_the_tts_voice(tmp_path: Path) -> None:
    settings = Settings(tts_voice=str(tmp_path / "missing.onnx"))

    with pytest.raises(ValueError, match=r"missing\.onnx"):
        PiperTTS.from_config(tts_config(settings))


async def test_a_resumed_reply_leaves_out_the_sentences_already_heard(tts: PiperTTS) -> None:
    whole = await collect(tts, MANY_SENTENCES, 8000)
    rest = [chunk async for chunk in tts.stream(MANY_SENTENCES, 8000, skip=5)]

    assert len(whole) == 8 and len(rest) == 3
    assert [len(c) for c in rest] == pytest.approx([len(c) for c in whole[5:]], rel=0.2)
