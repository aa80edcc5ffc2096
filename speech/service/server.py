"""``switchboard speech-server``: one copy of Whisper and Piper serving many calls.

Requests arrive on a ZeroMQ ROUTER socket (see :mod:`speech.service.protocol`). Pings are
answered by the I/O loop at once; transcriptions and syntheses run on the engines' own
worker threads in priority order (a final transcription before a speculative one, a
reply's first sentence before other replies' later ones). A request its client cancels is
dropped if still queued; a synthesis stops after its current sentence.
Nothing a client sends can stop the server: bad requests get an error reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from speech.grammar import EXPECTATIONS, GrammarResult, combine
from speech.service.protocol import (
    MAX_MESSAGE_BYTES,
    READY_LINE,
    Address,
    ProtocolError,
    curve_keys,
    pack,
    unpack,
)
from switchboard.conversation.engines import (
    DeadlineExceeded,
    EngineClosed,
    Priority,
    SpeechToText,
)

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 48000
MAX_TEXT = 5000
"""Characters of one synthesis request (a reply is a few sentences)."""


class SentenceStreamer(Protocol):
    """A TTS engine that can resume a reply after the sentences already delivered."""

    native_rate: int

    def stream(self, text: str, sample_rate: int, *, skip: int = 0
               ) -> AsyncGenerator[np.ndarray, None]: ...


Reply = Callable[[dict[str, Any]], None]


class GrammarMatcher(Protocol):
    async def recognize(self, pcm: np.ndarray, sample_rate: int, grammar: str
                        ) -> GrammarResult: ...


class BadRequest(ValueError):
    pass


class SecurityError(ValueError):
    """A server bound where others can reach it, without a shared secret."""


class _Secret:
    """ZAP credentials check: only the client key derived from the shared secret."""

    def __init__(self, secret: str) -> None:
        self._client = curve_keys(secret, "client").public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self._client


class SpeechServer:
    """Serves one STT and one TTS engine on ``address`` until :meth:`stop`."""

    def __init__(self, stt: SpeechToText, tts: SentenceStreamer, address: Address, *,
                 grammar: GrammarMatcher | None = None,
                 secret: str = "") -> None:
        if not address.local and not secret:
            raise SecurityError(
                f"refusing to serve speech on {address}, which other machines can reach, "
                "without a shared secret: set SWITCHBOARD_SPEECH_SECRET (the same on every "
                "node), or bind to 127.0.0.1 or an ipc:// path")
        self.stt = stt
        self.tts = tts
        self.grammar = grammar
        self.address = address
        self._secret = secret
        self._tasks: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._stopped = asyncio.Event()
        self.served = 0

    @property
    def load(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._tasks)

    def stop(self) -> None:
        self._stopped.set()

    async def serve(self) -> None:
        """Bind, answer requests until :meth:`stop`, then drop what is left."""
        context = zmq.asyncio.Context()
        auth: AsyncioAuthenticator | None = None
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self._secret:
            auth = AsyncioAuthenticator(context)
            auth.start()
            auth.configure_curve_callback("*", _Secret(self._secret))
            keys = curve_keys(self._secret, "server")
            socket.curve_secretkey = keys.secret
            socket.curve_publickey = keys.public
            socket.curve_server = True
        try:
            socket.bind(str(self.address))
        except zmq.ZMQError as exc:
            socket.close()
            context.term()
            raise OSError(f"cannot bind the speech server to {self.address}: {exc}") from exc
        log.info("%s %s%s", READY_LINE, self.address, " (CURVE)" if self._secret else "")
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            while not self._stopped.is_set():
                receive = asyncio.ensure_future(socket.recv_multipart(copy=True))
                await asyncio.wait({receive, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    break
                self._dispatch(socket, receive.result())
        finally:
            stopped.cancel()
            for task in list(self._tasks.values()):
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            if auth is not None:
                auth.stop()
            socket.close()
            context.term()
            log.info("speech server on %s stopped after %d requests", self.address,
                     self.served)

    def _dispatch(self, socket: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("dropped a message of %d frames (expected 2)", len(frames))
            return
        peer, frame = frames
        try:
            message = unpack(frame)
        except ProtocolError as exc:
            log.warning("dropped a malformed request: %s", exc)
            return
        request_id, op = message["id"], message["op"]

        def reply(answer: dict[str, Any]) -> None:
            # A ROUTER socket never blocks: a reply to a client gone away is dropped.
            socket.send_multipart([peer, pack({"id": request_id, **answer})],
                                  flags=zmq.NOBLOCK)

        if op == "ping":
            reply({"op": "pong", "load": self.load, "tts_rate": self.tts.native_rate})
        elif op == "cancel":
            task = self._tasks.get((peer, request_id))
            if task is not None:
                task.cancel()
        elif op in ("stt", "tts"):
            work = self._transcribe if op == "stt" else self._synthesize
            key = (peer, request_id)
            if key in self._tasks:
                reply(_error("bad_request", "duplicate request id"))
                return
            task = asyncio.create_task(self._answer(work, message, reply))
            self._tasks[key] = task
            task.add_done_callback(lambda _t: self._tasks.pop(key, None))
        else:
            reply(_error("bad_request", f"unknown op {op!r}"))

    async def _answer(
        self,
        work: Callable[[dict[str, Any], Reply], Awaitable[None]],
        message: dict[str, Any],
        reply: Reply,
    ) -> None:
        try:
            await work(message, reply)
            self.served += 1
        except BadRequest as exc:
            reply(_error("bad_request", str(exc)))
        except DeadlineExceeded as exc:
            reply(_error("deadline", str(exc)))
        except EngineClosed as exc:
            reply(_error("closed", str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request %s (%s) failed", message["id"], message["op"])
            reply(_error("failed", f"{type(exc).__name__}: {exc}"))

    async def _transcribe(self, message: dict[str, Any], reply: Reply) -> None:
        pcm = _pcm(message)
        rate = _rate(message)
        try:
            priority = Priority(message.get("priority", Priority.FINAL))
        except ValueError:
            raise BadRequest(f"unknown priority {message.get('priority')!r}") from None
        deadline_ms = message.get("deadline_ms")
        if deadline_ms is not None and not isinstance(deadline_ms, int | float):
            raise BadRequest("'deadline_ms' must be a number of milliseconds or null")
        deadline = None if deadline_ms is None else time.monotonic() + deadline_ms / 1000
        expect = message.get("expect")
        if expect is not None and not isinstance(expect, str):
            raise BadRequest("'expect' must be the name of an expected answer or null")
        heard = self.stt.transcribe(pcm, rate, priority=priority, deadline=deadline)
        if self.grammar is None or expect not in EXPECTATIONS:
            transcript = await heard
        else:
            assert expect is not None
            whisper, matched = await asyncio.gather(
                heard, self.grammar.recognize(pcm, rate, expect), return_exceptions=True)
            if isinstance(whisper, BaseException):
                raise whisper
            transcript = whisper
            if isinstance(matched, BaseException):
                log.warning("grammar %s failed (Whisper's transcript kept): %s", expect, matched)
            else:
                transcript = combine(transcript, matched, expect)
        reply({"op": "stt", "transcript": asdict(transcript)})

    async def _synthesize(self, message: dict[str, Any],
                          reply: Reply) -> None:
        text, skip = message.get("text"), message.get("skip", 0)
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise BadRequest(f"'text' must be a string of at most {MAX_TEXT} characters")
        if not isinstance(skip, int) or skip < 0:
            raise BadRequest("'skip' must be a number of sentences (0 or more)")
        rate = _rate(message)
        index = skip
        async with contextlib.aclosing(self.tts.stream(text, rate, skip=skip)) as sentences:
            async for pcm in sentences:
                reply({"op": "chunk", "index": index,
                             "pcm": pcm.astype("<i2").tobytes()})
                index += 1
        reply({"op": "done", "sentences": index})


def _pcm(message: dict[str, Any]) -> np.ndarray:
    pcm = message.get("pcm")
    if not isinstance(pcm, bytes) or len(pcm) % 2:
        raise BadRequest("'pcm' must be int16 little-endian bytes")
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


def _rate(message: dict[str, Any]) -> int:
    rate = message.get("rate")
    if not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise BadRequest(f"'rate' must be a sample rate from {MIN_RATE} to {MAX_RATE} Hz")
    return rate


def _error(kind: str, text: str) -> dict[str, Any]:
    return {"op": "error", "error": kind, "message": text}


async def serve_until_signalled(server: SpeechServer) -> None:
    """Run ``server`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stop)
    await server.serve()
