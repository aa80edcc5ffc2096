"""The speech service's protocol, balancing, failover, priorities, cancellation and
security, with engines that only wait (fast); the real models run in
``tests/integration/test_speech_servers.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from speech.grammar import GrammarRecognizer, digits_in
from speech.service.pool import SpeechPool
from speech.service.protocol import Address, AddressError, pack, parse_addresses, unpack
from speech.service.server import SecurityError, SpeechServer
from speech.tts import PiperTTS
from switchboard.base.processes import free_port
from switchboard.conversation.engines import (
    DeadlineExceeded,
    EngineError,
    Priority,
    Transcript,
)
from tests.support.audio_tools import piper_speech

RATE = 8000
WAIT_S = 10.0


class SlowSTT:
    """Takes ``delay_s`` per request, one at a time; says how many samples it got."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.started: list[int] = []
        self._lock = asyncio.Lock()

    async def transcribe(self, pcm: np.ndarray, sample_rate: int, *,
                         priority: Priority = Priority.FINAL,
                         deadline: float | None = None, expect: str | None = None
                         ) -> Transcript:
        queued = time.monotonic()
        async with self._lock:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("waited past its deadline")
            self.started.append(len(pcm))
            await asyncio.sleep(self.delay_s)
        return Transcript(text=f"{len(pcm)} samples", confidence=0.9, no_speech_prob=0.0,
                          language="en", audio_ms=len(pcm) * 1000 // sample_rate,
                          elapsed_ms=self.delay_s * 1000,
                          queue_ms=(time.monotonic() - queued) * 1000 - self.delay_s * 1000)

    def warm_up(self) -> None: ...
    def health(self) -> str | None: return None
    async def aclose(self) -> None: ...


class CountingTTS:
    """One chunk per sentence, each filled with the sentence's number, ``delay_s`` apart."""

    native_rate = 16000

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.sentences = 0

    async def stream(self, text: str, sample_rate: int, *, skip: int = 0
                     ) -> AsyncGenerator[np.ndarray, None]:
        count = len([s for s in text.split(".") if s.strip()])
        for index in range(skip, count):
            await asyncio.sleep(self.delay_s)
            self.sentences += 1
            yield np.full(sample_rate // 100, index + 1, dtype=np.int16)


class Running:
    """A speech server on its own thread and event loop."""

    def __init__(self, server: SpeechServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_until_complete(self.server.serve())

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.stop)
            self.thread.join(WAIT_S)

    def hang(self, seconds: float) -> None:
        """Block the server's loop, as a stuck process would (no pongs, no replies)."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)


@contextmanager
def serving(address: str, stt: SlowSTT | None = None, tts: CountingTTS | None = None,
            secret: str = "") -> Iterator[Running]:
    running = Running(SpeechServer(stt or SlowSTT(), tts or CountingTTS(),  # type: ignore[arg-type]
                                   Address.parse(address), secret=secret))
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def pool_of(*addresses: str, **options: object) -> Iterator[SpeechPool]:
    pool = SpeechPool([Address.parse(a) for a in addresses], **options)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def sockets(tmp_path: Path) -> list[str]:
    return [f"ipc://{tmp_path / f'speech-{n}.sock'}" for n in range(3)]


def pcm(samples: int = 1600) -> np.ndarray:
    return np.ones(samples, dtype=np.int16)


async def read_all(pool: SpeechPool, text: str) -> list[int]:
    return [int(chunk[0]) async for chunk in pool.synthesize(text, RATE)]


# --- protocol ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ipc:///run/speech.sock", "tcp://127.0.0.1:7100",
                                 "tcp://speech.example.com:7100"])
def test_addresses_parse(url: str) -> None:
    assert str(Address.parse(url)) == url


@pytest.mark.parametrize("url", ["", "ipc://", "tcp://127.0.0.1", "http://x:1", "speech:7100"])
def test_a_bad_address_says_which_forms_work(url: str) -> None:
    with pytest.raises(AddressError, match=r"ipc:///path/to/speech.sock.*tcp://host:port"):
        Address.parse(url)


def test_loopback_and_ipc_are_local_other_hosts_are_not() -> None:
    local = parse_addresses("ipc:///tmp/a.sock, tcp://127.0.0.1:1, tcp://[::1]:2, "
                            "tcp://localhost:3")
    assert all(a.local for a in local)
    assert not any(a.local for a in parse_addresses("tcp://0.0.0.0:1,tcp://10.1.2.3:1"))


@pytest.mark.parametrize("frame", [b"", b"\xc1", msgpack.packb([1, 2]),
                                   msgpack.packb({"id": "x", "op": "stt"}),
                                   msgpack.packb({"id": 1})])
def test_unpack_refuses_what_is_not_a_request(frame: bytes) -> None:
    with pytest.raises(ValueError):
        unpack(frame)


# --- serving ------------------------------------------------------------------------------


async def test_a_transcription_comes_back_with_queue_and_compute_times(
        sockets: list[str]) -> None:
    with serving(sockets[0]), pool_of(sockets[0]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        transcript = await pool.transcribe(pcm(1234), RATE)

    assert transcript.text == "1234 samples"
    assert transcript.elapsed_ms == pytest.approx(50.0)
    assert transcript.queue_ms >= 0


async def test_a_reply_streams_sentence_by_sentence(sockets: list[str]) -> None:
    with serving(sockets[0]), pool_of(sockets[0]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        assert await read_all(pool, "One. Two. Three.") == [1, 2, 3]
        assert pool.tts_rate == 16000


def test_garbage_gets_an_error_or_nothing_and_the_server_keeps_serving(
        sockets: list[str]) -> None:
    with serving(sockets[0]) as running:
        context = zmq.Context()
        client = context.socket(zmq.DEALER)
        client.setsockopt(zmq.RCVTIMEO, 5000)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(sockets[0])
        try:
            client.send(b"\x00garbage")
            client.send_multipart([b"two", b"frames"])
            for request in ({"id": 1, "op": "dance"},
                            {"id": 2, "op": "stt", "pcm": b"\x01", "rate": RATE},
                            {"id": 3, "op": "stt", "pcm": b"\x01\x00", "rate": 7},
                            {"id": 4, "op": "stt", "pcm": b"\x01\x00", "rate": RATE,
                             "priority": 99},
                            {"id": 5, "op": "tts", "text": 42, "rate": RATE},
                            {"id": 6, "op": "tts", "text": "Hi.", "rate": RATE, "skip": -1}):
                client.send(pack(request))
                reply = unpack(client.recv())
                assert reply["id"] == request["id"] and reply["op"] == "error"
                assert reply["error"] == "bad_request" and reply["message"]
            client.send(pack({"id": 7, "op": "stt", "pcm": b"\x01\x00" * 10, "rate": RATE}))
            assert unpack(client.recv())["transcript"]["text"] == "10 samples"
        finally:
            client.close()
            context.term()
        assert running.thread.is_alive()


# --- balancing, priorities, cancellation, deadlines ----------------------------------------


async def test_requests_spread_over_the_servers_by_outstanding_work(
        sockets: list[str]) -> None:
    stts = [SlowSTT(0.1), SlowSTT(0.1)]
    with serving(sockets[0], stts[0]), serving(sockets[1], stts[1]), \
            pool_of(sockets[0], sockets[1]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        await asyncio.sleep(0.3)  # both connected
        await asyncio.gather(*(pool.transcribe(pcm(), RATE) for _ in range(8)))

    assert [len(s.started) for s in stts] == [4, 4]


async def test_a_cancelled_request_never_reaches_the_model(sockets: list[str]) -> None:
    stt = SlowSTT(0.3)
    with serving(sockets[0], stt), pool_of(sockets[0]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        first = asyncio.create_task(pool.transcribe(pcm(100), RATE))
        await asyncio.sleep(0.1)
        stale = asyncio.create_task(pool.transcribe(pcm(200), RATE,
                                                    priority=Priority.SPECULATIVE))
        await asyncio.sleep(0.05)
        stale.cancel()
        await first
        await pool.transcribe(pcm(300), RATE)

    assert stt.started == [100, 300]


async def test_a_request_queued_past_its_deadline_is_dropped(sockets: list[str]) -> None:
    stt = SlowSTT(0.4)
    with serving(sockets[0], stt), pool_of(sockets[0]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        busy = asyncio.create_task(pool.transcribe(pcm(100), RATE))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await pool.transcribe(pcm(200), RATE, priority=Priority.SPECULATIVE,
                                  deadline=time.monotonic() + 0.1)
        await busy

    assert stt.started == [100]


# --- failover -----------------------------------------------------------------------------


async def test_a_server_that_stops_mid_request_loses_nothing(sockets: list[str]) -> None:
    stts = [SlowSTT(0.5), SlowSTT(0.5)]
    with serving(sockets[0], stts[0]) as first, serving(sockets[1], stts[1]), \
            pool_of(sockets[0], sockets[1]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        await asyncio.sleep(0.3)
        requests = [asyncio.create_task(pool.transcribe(pcm(n), RATE))
                    for n in (100, 200, 300, 400)]
        await asyncio.sleep(0.1)
        await asyncio.to_thread(first.stop)
        texts = [t.text for t in await asyncio.gather(*requests)]

    assert texts == ["100 samples", "200 samples", "300 samples", "400 samples"]
    assert pool.stats.retries >= 1 and pool.stats.servers_lost == 1


async def test_a_busy_lone_server_keeps_a_late_request(sockets: list[str]) -> None:
    """Past the request timeout, with nowhere else to go, the request is not sent again
    (it would queue again at the back of the same server)."""
    stt = SlowSTT(0.6)
    with serving(sockets[0], stt), pool_of(sockets[0], request_timeout_s=0.2) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        texts = [t.text for t in await asyncio.gather(
            *(pool.transcribe(pcm(n), RATE) for n in (10, 20)))]

    assert texts == ["10 samples", "20 samples"]
    assert sorted(stt.started) == [10, 20] and pool.stats.retries == 0


async def test_a_late_reply_is_asked_of_another_live_server(sockets: list[str]) -> None:
    slow, quick = SlowSTT(3.0), SlowSTT(0.01)
    with serving(sockets[0], slow), serving(sockets[1], quick), \
            pool_of(sockets[0], sockets[1], request_timeout_s=0.3) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        await asyncio.sleep(0.3)
        texts = [t.text for t in await asyncio.gather(
            *(pool.transcribe(pcm(n), RATE) for n in (10, 20)))]

    assert texts == ["10 samples", "20 samples"]
    assert len(slow.started) == 1 and len(quick.started) == 2  # one moved over
    assert pool.stats.retries == 1


async def test_a_hung_server_is_given_up_after_its_silence(sockets: list[str]) -> None:
    with serving(sockets[0], SlowSTT(0.01)) as first, serving(sockets[1], SlowSTT(0.01)), \
            pool_of(sockets[0], sockets[1], dead_after_s=0.5) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        await asyncio.sleep(0.3)
        first.hang(3.0)
        texts = [(await pool.transcribe(pcm(n), RATE)).text for n in (10, 20, 30, 40)]
        lost = pool.stats.servers_lost

    assert texts == ["10 samples", "20 samples", "30 samples", "40 samples"]
    assert lost == 1  # given up after dead_after_s, not waited out (the hang ends at 3 s)


async def test_a_reply_resumes_on_another_server_after_the_sentences_heard(
        sockets: list[str]) -> None:
    text = "One. Two. Three. Four. Five. Six."
    slow = [CountingTTS(0.15), CountingTTS(0.15)]
    with serving(sockets[0], tts=slow[0]) as first, serving(sockets[1], tts=slow[1]) as second, \
            pool_of(sockets[0], sockets[1]) as pool:
        await asyncio.to_thread(pool.wait_ready, WAIT_S)
        await asyncio.sleep(0.3)
        heard: list[int] = []
        async for chunk in pool.synthesize(text, RATE):
            heard.append(int(chunk[0]))
            if len(heard) == 2:  # kill whichever server is speaking
                speaking = first if slow[0].sentences else second
                await asyncio.to_thread(speaking.stop)

    assert heard == [1, 2, 3, 4, 5, 6]
    assert pool.stats.retries == 1


async def test_with_every_server_gone_a_request_fails_clearly(sockets: list[str]) -> None:
    with pool_of(sockets[2], request_timeout_s=0.5) as pool:
        with pytest.raises(EngineError, match=r"no speech server answers.*speech-2\.sock"):
            await pool.transcribe(pcm(), RATE)
        assert "switchboard speech-server" in (pool.health() or "")


async def test_a_restarted_server_is_used_again(sockets: list[str]) -> None:
    with pool_of(sockets[0]) as pool:
        with serving(sockets[0]):
            await asyncio.to_thread(pool.wait_ready, WAIT_S)
            assert (await pool.transcribe(pcm(10), RATE)).text == "10 samples"
        with serving(sockets[0]):
            await asyncio.to_thread(pool.wait_ready, WAIT_S)
            assert (await pool.transcribe(pcm(20), RATE)).text == "20 samples"


# --- security -----------------------------------------------------------------------------


def test_a_server_others_can_reach_needs_a_secret() -> None:
    with pytest.raises(SecurityError, match="SWITCHBOARD_SPEECH_SECRET"):
        SpeechServer(SlowSTT(), CountingTTS(), Address.parse("tcp://0.0.0.0:7100"))


async def test_with_a_secret_only_clients_holding_it_are_served() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with serving(address, secret="correct horse"):
        with pool_of(address, secret="correct horse") as pool:
            await asyncio.to_thread(pool.wait_ready, WAIT_S)
            assert (await pool.transcribe(pcm(10), RATE)).text == "10 samples"
        with pool_of(address, secret="wrong", request_timeout_s=1.0) as intruder:
            with pytest.raises(EngineError, match="SWITCHBOARD_SPEECH_SECRET"):
                await intruder.transcribe(pcm(10), RATE)
        with pool_of(address, request_timeout_s=1.0) as plain:
            with pytest.raises(EngineError):
                await plain.transcribe(pcm(10), RATE)


# --- grammars ---------------------------------------------------------------------------------


class FixedSTT(SlowSTT):
    """Always hears ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(0.01)
        self.text = text

    async def transcribe(self, pcm: np.ndarray, sample_rate: int, *,
                         priority: Priority = Priority.FINAL,
                         deadline: float | None = None, expect: str | None = None
                         ) -> Transcript:
        heard = await super().transcribe(pcm, sample_rate, priority=priority)
        return Transcript(self.text, 0.5, 0.0, "en", heard.audio_ms, heard.elapsed_ms)


@pytest.fixture(scope="module")
def grammar() -> Iterator[GrammarRecognizer]:
    recognizer = GrammarRecognizer()
    recognizer.warm_up()
    yield recognizer
    recognizer.close()


async def test_an_expected_order_number_is_corrected_by_the_grammar(
        sockets: list[str], tts: PiperTTS, grammar: GrammarRecognizer) -> None:
    """Whisper (here: a fake) heard four digits; the grammar, asked because the dialog
    expects an order number, heard the five that were said."""
    said = piper_speech(tts, "four eight two one three", RATE)
    running = Running(SpeechServer(FixedSTT("4, 8, 2, 1."), CountingTTS(),  # type: ignore[arg-type]
                                   Address.parse(sockets[0]), grammar=grammar))
    try:
        with pool_of(sockets[0]) as pool:
            await asyncio.to_thread(pool.wait_ready, WAIT_S)
            corrected = await pool.transcribe(said, RATE, expect="order_number")
            plain = await pool.transcribe(said, RATE)
            other = await pool.transcribe(said, RATE, expect="favourite_colour")
    finally:
        running.stop()

    assert (corrected.text, corrected.recognizer) == ("48213", "grammar:order_number")
    assert (plain.text, plain.recognizer) == ("4, 8, 2, 1.", "whisper")
    assert other.text == "4, 8, 2, 1."


async def test_other_speech_is_never_forced_into_a_grammar(
        sockets: list[str], tts: PiperTTS, grammar: GrammarRecognizer) -> None:
    said = piper_speech(tts, "I want to talk to a human agent.", RATE)
    running = Running(SpeechServer(FixedSTT("I want to talk to a human agent."),
                                   CountingTTS(), Address.parse(sockets[0]),  # type: ignore[arg-type]
                                   grammar=grammar))
    try:
        with pool_of(sockets[0]) as pool:
            await asyncio.to_thread(pool.wait_ready, WAIT_S)
            heard = await pool.transcribe(said, RATE, expect="order_number")
    finally:
        running.stop()

    assert (heard.text, heard.recognizer) == ("I want to talk to a human agent.", "whisper")


@pytest.mark.parametrize(("said", "digits"), [
    ("4, 8, two, one", "4821"), ("It's 4-8-2-1-3.", "48213"), ("48213", "48213"),
    ("Oh, I want to talk to a person.", ""), ("Two questions about the one I ordered.", ""),
])
def test_only_a_run_of_digits_counts_as_a_number(said: str, digits: str) -> None:
    """A lone number word in other speech is no misheard order number: the grammar must
    not replace the sentence."""
    assert digits_in(said) == digits
