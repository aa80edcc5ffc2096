"""The client side of the speech service: every media process's way to Whisper and Piper.

A :class:`SpeechPool` holds one DEALER socket per speech server and runs their I/O on its
own thread (so one pool serves any event loop: the web app's, a SIP worker's, a test's).

- **Balancing**: each request goes to the live server with the least outstanding work:
  this client's requests in flight there plus the other clients' work the server reported
  in its last pong.
- **Failover**: a server is lost when its connection drops (a killed process: at once) or
  when it stops answering pings (a hung one: after ``dead_after_s``). Its requests are
  sent again to another server; a reply that does not come within ``request_timeout_s``
  is cancelled there and asked of another live server, if there is one (a busy server
  that still answers pings keeps the request otherwise: asking it again would only queue
  the request again at the back). A synthesis resumes after the sentences already
  heard. A call never fails because one server died while another lives.
- **Priorities** travel with each request (final transcription before speculative); a
  cancelled request is cancelled on its server too (a stale speculative transcription
  never occupies the model).
- **Timing**: each transcript says how long it waited in the server's queue and how long
  it computed; :attr:`SpeechPool.stats` counts requests, retries and lost servers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from speech.inference import drain
from speech.service.protocol import (
    MAX_MESSAGE_BYTES,
    Address,
    ProtocolError,
    pack,
    secure_client,
    unpack,
)
from switchboard.base.metrics import SPEECH_QUEUE_WAIT
from switchboard.conversation.audio import check_pcm
from switchboard.conversation.engines import (
    DeadlineExceeded,
    EngineClosed,
    EngineError,
    Priority,
    Transcript,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_S = 0.25
"""How often each server is pinged."""
_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class ServerLost(EngineError):
    """The server a request was sent to died or stopped answering."""


@dataclass
class PoolStats:
    requests: int = 0
    retries: int = 0
    servers_lost: int = 0


class _Connection:
    """One speech server: its socket, the requests in flight there, whether it answers."""

    def __init__(self, context: zmq.asyncio.Context, address: Address, secret: str,
                 dead_after_s: float) -> None:
        self.address = address
        self.dead_after_s = dead_after_s
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a server that is gone
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if secret:
            secure_client(self.socket, secret)
        self.monitor = self.socket.get_monitor_socket(_MONITORED)
        self.socket.connect(str(address))
        self.connected = False
        self.last_heard = 0.0
        self.others_load = 0
        self.tts_rate = 0
        self.refused = ""
        self.pending: dict[int, asyncio.Queue[dict[str, Any] | ServerLost]] = {}
        self._pending_at_ping = 0

    @property
    def alive(self) -> bool:
        return self.connected and time.monotonic() - self.last_heard < self.dead_after_s

    @property
    def work(self) -> int:
        return len(self.pending) + self.others_load

    def _send_now(self, message: dict[str, Any]) -> bool:
        """Send without waiting; False when there is no connection to send on."""
        sent = self.socket.send(pack(message), flags=zmq.NOBLOCK)
        # An asyncio socket reports a failed non-blocking send in the (done) future.
        assert isinstance(sent, asyncio.Future)
        return not (sent.done() and sent.exception() is not None)

    def send(self, message: dict[str, Any]) -> None:
        if not self._send_now(message):
            raise ServerLost(f"speech server {self.address} is not connected")

    def ping(self) -> None:
        self._pending_at_ping = len(self.pending)
        self._send_now({"id": 0, "op": "ping"})  # not connected: nothing to ping

    def heard(self, message: dict[str, Any]) -> None:
        self.last_heard = time.monotonic()
        if message["op"] == "pong":
            self.others_load = max(0, int(message.get("load", 0)) - self._pending_at_ping)
            self.tts_rate = int(message.get("tts_rate", 0))
        elif (queue := self.pending.get(message["id"])) is not None:
            queue.put_nowait(message)

    def lose(self, why: str) -> None:
        """Fail every request in flight here (they are retried elsewhere)."""
        self.connected = False
        lost = ServerLost(f"speech server {self.address} {why}")
        for queue in self.pending.values():
            queue.put_nowait(lost)

    def cancel(self, request_id: int) -> None:
        if not self.socket.closed:
            self._send_now({"id": request_id, "op": "cancel"})  # gone: nothing to cancel

    async def replies(self, request_id: int, message: dict[str, Any], timeout_s: float,
                      elsewhere: Callable[[], bool]) -> AsyncIterator[dict[str, Any]]:
        """Send ``message`` and yield its replies. A reply late by ``timeout_s`` gives the
        request up here only when ``elsewhere()`` says another live server could take it,
        or this one stopped answering pings: asked again of the same busy server it would
        only queue again at the back."""
        queue: asyncio.Queue[dict[str, Any] | ServerLost] = asyncio.Queue()
        self.pending[request_id] = queue
        finished = False
        try:
            self.send(message)
            while True:
                try:
                    reply = await asyncio.wait_for(queue.get(), timeout_s)
                except TimeoutError:
                    if self.alive and not elsewhere():
                        continue
                    raise ServerLost(f"speech server {self.address} did not answer within "
                                     f"{timeout_s:.1f} s") from None
                if isinstance(reply, ServerLost):
                    finished = True
                    raise reply
                yield reply
                if reply["op"] in ("stt", "done", "error"):
                    finished = True
                    return
        finally:
            del self.pending[request_id]
            if not finished:
                self.cancel(request_id)

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close()
        self.socket.close()


class SpeechPool:
    """Speech requests balanced over ``addresses``, with failover (see the module)."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        secret: str = "",
        request_timeout_s: float = 5.0,
        dead_after_s: float = 1.5,
    ) -> None:
        if not addresses:
            raise ValueError("a speech pool needs at least one server address")
        self.addresses = list(addresses)
        self.request_timeout_s = request_timeout_s
        self.stats = PoolStats()
        self._ids = itertools.count(1)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="speech-pool",
                                        daemon=True)
        self._thread.start()
        self._connections: list[_Connection] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._rotation = 0
        self._call(self._open(secret, dead_after_s)).result()

    # --- from any thread or event loop -------------------------------------------------

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until some server answers; :class:`EngineError` saying why not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.health() is None:
                return
            time.sleep(0.05)
        raise EngineError(self.health() or "no speech server answered")

    def health(self) -> str | None:
        if self._closed:
            return "the speech pool is closed"
        if any(c.alive for c in self._connections):
            return None
        refused = [f"{c.address} refused our key ({c.refused})" for c in self._connections
                   if c.refused]
        return "no speech server answers at " + ", ".join(map(str, self.addresses)) + (
            f"; {'; '.join(refused)}: check SWITCHBOARD_SPEECH_SECRET" if refused else
            "; start one with `switchboard speech-server` (or `switchboard run`)")

    @property
    def tts_rate(self) -> int:
        """The servers' voice rate (0 until one answered)."""
        return next((c.tts_rate for c in self._connections if c.tts_rate), 0)

    async def transcribe(self, pcm: np.ndarray, sample_rate: int, *,
                         priority: Priority = Priority.FINAL,
                         deadline: float | None = None, expect: str | None = None
                         ) -> Transcript:
        """Transcribe on the least busy live server; see the module for retries."""
        check_pcm(pcm)
        return await asyncio.wrap_future(self._call(self._transcribe(
            pcm.astype("<i2").tobytes(), sample_rate, priority, deadline, expect)))

    async def synthesize(self, text: str, sample_rate: int) -> AsyncGenerator[np.ndarray, None]:
        """Sentences of ``text`` at ``sample_rate`` as the server produces them; closing
        the generator cancels the synthesis on its server."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[np.ndarray | BaseException | None] = asyncio.Queue()

        def deliver(item: np.ndarray | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:
                pass  # the listener's loop is gone

        work = self._call(self._synthesize(text, sample_rate, deliver))
        try:
            async for chunk in drain(chunks):
                yield chunk
        finally:
            work.cancel()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coroutine.close()
            raise EngineClosed("the speech pool is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # --- on the pool's own thread ------------------------------------------------------

    async def _open(self, secret: str, dead_after_s: float) -> None:
        self._context = zmq.asyncio.Context()
        for address in self.addresses:
            connection = _Connection(self._context, address, secret, dead_after_s)
            self._connections.append(connection)
            self._tasks.append(asyncio.create_task(self._read(connection)))
            self._tasks.append(asyncio.create_task(self._watch(connection)))
        self._tasks.append(asyncio.create_task(self._heartbeat()))

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for connection in self._connections:
            connection.lose("is closed")
            connection.close()
        self._context.term()

    async def _read(self, connection: _Connection) -> None:
        while True:
            frame = await connection.socket.recv()
            try:
                connection.heard(unpack(frame))
            except ProtocolError as exc:
                log.warning("dropped a malformed reply from %s: %s", connection.address, exc)

    async def _watch(self, connection: _Connection) -> None:
        while True:
            event = parse_monitor_message(await connection.monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                connection.connected, connection.refused = True, ""
                connection.last_heard = time.monotonic()  # until its first pong
                connection.ping()
                log.info("speech server %s connected", connection.address)
            elif kind == zmq.EVENT_DISCONNECTED and connection.connected:
                self._lost(connection, "disconnected")
            elif kind != zmq.EVENT_DISCONNECTED:
                connection.refused = f"handshake failed: event {kind}"
                log.warning("speech server %s: %s", connection.address, connection.refused)

    def _lost(self, connection: _Connection, why: str) -> None:
        self.stats.servers_lost += 1
        log.warning("speech server %s %s; its %d requests go to another server",
                    connection.address, why, len(connection.pending))
        connection.lose(why)

    async def _heartbeat(self) -> None:
        while True:
            for connection in self._connections:
                if connection.connected and not connection.alive and connection.last_heard:
                    self._lost(connection, f"stopped answering for "
                               f"{connection.dead_after_s:.1f} s")
                connection.ping()
            await asyncio.sleep(HEARTBEAT_S)

    def _another_live(self, current: _Connection, tried: Sequence[_Connection]) -> bool:
        return any(c.alive for c in self._connections if c is not current and c not in tried)

    async def _choose(self, avoid: Sequence[_Connection]) -> _Connection:
        """The live server with the least work, preferring those not in ``avoid``; waits
        up to the request timeout for one to come (back)."""
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            live = [c for c in self._connections if c.alive]
            if live:
                fresh = [c for c in live if c not in avoid] or live
                self._rotation += 1
                start = self._rotation % len(fresh)
                rotated = fresh[start:] + fresh[:start]
                return min(rotated, key=lambda c: c.work)
            if time.monotonic() > deadline:
                raise EngineError(self.health() or "no speech server answers")
            await asyncio.sleep(0.02)

    async def _transcribe(self, pcm: bytes, rate: int, priority: Priority,
                          deadline: float | None, expect: str | None) -> Transcript:
        def request() -> dict[str, Any]:
            remaining_ms = None if deadline is None else (deadline - time.monotonic()) * 1000
            if remaining_ms is not None and remaining_ms <= 0:
                raise DeadlineExceeded("the transcription's deadline passed before a speech "
                                       "server could take it")
            return {"op": "stt", "pcm": pcm, "rate": rate, "priority": int(priority),
                    "deadline_ms": remaining_ms, "expect": expect}

        reply = await self._ask("transcription", request)
        transcript = Transcript(**reply["transcript"])
        SPEECH_QUEUE_WAIT.observe(transcript.queue_ms / 1000)
        return transcript

    async def _ask(self, what: str, request: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The one reply to ``request()`` (built anew for each try), from the least busy
        live server, retried on another when one is lost."""
        self.stats.requests += 1
        tried: list[_Connection] = []
        for _attempt in range(len(self._connections) + 2):
            connection = await self._choose(tried)
            request_id = next(self._ids)
            message = {"id": request_id, **request()}
            try:
                async for reply in connection.replies(
                        request_id, message, self.request_timeout_s,
                        partial(self._another_live, connection, tried)):
                    if reply["op"] == "error":
                        _raise_error(reply)
                    return reply
            except ServerLost as exc:
                tried.append(connection)
                self.stats.retries += 1
                log.warning("%s retried on another server: %s", what, exc)
        raise EngineError(f"{what} failed on every speech server ({len(tried)} tries)")

    async def _synthesize(self, text: str, rate: int,
                          deliver: Callable[[np.ndarray | BaseException | None], None]) -> None:
        self.stats.requests += 1
        delivered = 0
        tried: list[_Connection] = []
        try:
            for _attempt in range(len(self._connections) + 2):
                connection = await self._choose(tried)
                request_id = next(self._ids)
                message = {"id": request_id, "op": "tts", "text": text, "rate": rate,
                           "skip": delivered}
                try:
                    async for reply in connection.replies(
                            request_id, message, self.request_timeout_s,
                            partial(self._another_live, connection, tried)):
                        if reply["op"] == "chunk" and reply.get("index") == delivered:
                            deliver(np.frombuffer(reply["pcm"], dtype="<i2").astype(np.int16))
                            delivered += 1
                        elif reply["op"] == "done":
                            deliver(None)
                            return
                        elif reply["op"] == "error":
                            _raise_error(reply)
                except ServerLost as exc:
                    tried.append(connection)
                    self.stats.retries += 1
                    log.warning("synthesis resumed on another server after %d sentences: %s",
                                delivered, exc)
            raise EngineError(f"synthesis failed on every speech server ({len(tried)} tries)")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            deliver(exc)


def _raise_error(reply: dict[str, Any]) -> None:
    kind, text = reply.get("error"), str(reply.get("message", ""))
    if kind == "deadline":
        raise DeadlineExceeded(text)
    if kind == "bad_request":
        raise ValueError(f"the speech server refused the request: {text}")
    if kind == "closed":
        raise ServerLost(f"the speech server is shutting down: {text}")
    raise EngineError(f"the speech server failed: {text}")
