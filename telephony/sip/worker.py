"""One SIP media worker: a PJSUA2 endpoint, an asyncio loop and a node, ≤ 4 calls.

Each call is started on the node as soon as it is answered; DTMF digits go to its handle.
Each call's :class:`~switchboard.conversation.call.CallControl` (``_SipControl``) turns a
handoff (to ``sip_transfer_uri``) or a transfer asked of the handle into a REFER; otherwise
the call is hung up (BYE) when the conversation ends. Every call is recorded as a stereo WAV when
``sip_record`` is on.

With ``sip_rejoin_lost_calls``, the worker also takes the node's rejoin jobs from Redis (the
calls of a lost node, or of a dead worker, whose callers support Replaces): it calls the
caller's Contact with an INVITE that replaces the cut-off dialog (RFC 3891), and the call
resumes the lost conversation where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from switchboard.base.children import on_drain_signal
from switchboard.conversation.audio import FRAME_MS
from switchboard.conversation.call import CallHandle, CallRequest
from switchboard.conversation.host import CallHost
from switchboard.conversation.pipeline import CallResult
from switchboard.storage.live import LiveState, LiveStateUnavailable, RejoinJob
from telephony.sip.call import CallLeg
from telephony.sip.endpoint import CALL_UUID_HEADER, SipEndpoint
from telephony.sip.media_port import SipAudioSink, SipAudioSource
from telephony.sip.recording import CallRecording

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Clock rate of the conference bridge and of the pipeline; PJSIP resamples each codec."""
TRANSFER_WAIT_S = 10.0
"""How long a transfer may take (REFER accepted, final NOTIFY) before the call is hung up."""
HANGUP_WAIT_S = 5.0
"""How long to wait for a hung-up call to be disconnected."""
SHUTDOWN_WAIT_S = 5.0
"""How long shutdown waits for the calls' pipelines to store their ends."""
START_WAIT_S = 20.0
"""How long the SIP endpoint may take to start."""
REJOIN_POLL_S = 1.0
"""How long one wait for a rejoin job in Redis lasts."""


class SipCallFailed(RuntimeError):
    """An outbound call was not answered; the message has the SIP status."""


@dataclass
class _Session:
    leg: CallLeg
    task: asyncio.Task[CallResult | None] | None = None
    handle: CallHandle | None = None
    call_id: str | None = None
    recording: CallRecording | None = None
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    transfer_final: asyncio.Event = field(default_factory=asyncio.Event)
    end_status: int = 0
    end_reason: str = ""
    transfer_status: int = 0
    rtp_timed_out: bool = False
    ring_expired: bool = False
    """An outbound call given up after ringing for ``sip_ring_timeout_s``."""
    started: float = field(default_factory=time.perf_counter)
    rejoins: RejoinJob | None = None
    """The lost call this outbound call takes back from its caller."""


class SipWorker:
    """Answers (or places) SIP calls and runs the conversation pipeline on each."""

    def __init__(self, node: CallHost) -> None:
        self.node = node
        self.settings = node.settings
        self.sessions: dict[int, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._endpoint: SipEndpoint | None = None
        self._idle = asyncio.Event()  # set while no call is up
        self._idle.set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> list[str]:
        """Start PJSIP; returns what it listens on (e.g. ``udp:127.0.0.1:5060``)."""
        self._loop = asyncio.get_running_loop()
        loop = self._loop

        def new_media() -> tuple[SipAudioSource, SipAudioSink]:
            return SipAudioSource(loop, SAMPLE_RATE), SipAudioSink(SAMPLE_RATE)

        self._endpoint = SipEndpoint(self.settings, self, new_media, sample_rate=SAMPLE_RATE)
        listening = await asyncio.wait_for(
            asyncio.wrap_future(self._endpoint.start()), START_WAIT_S)
        log.info("SIP worker listening on %s (RTP from port %d, max %d calls)",
                 ", ".join(listening), self.settings.sip_rtp_port, self.settings.sip_max_calls)
        return listening

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer calls (and call back the callers of lost calls, when configured) until
        ``stop`` is set, then shut down cleanly."""
        await self.start()
        self.node.replay_spooled()  # calls' writes an earlier process left on disk
        settings = self.settings
        rejoins = (asyncio.create_task(self._take_rejoins(), name="sip-rejoins")
                   if settings.redis_url and settings.sip_rejoin_lost_calls else None)
        try:
            await stop.wait()
        finally:
            if rejoins is not None:
                rejoins.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rejoins
            await self.aclose()

    async def aclose(self) -> None:
        """End every call (cancelling its pipeline, which stores the end), hang up, stop PJSIP."""
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.stop()
            if not await asyncio.to_thread(endpoint.join, SHUTDOWN_WAIT_S + 5):
                log.error("the SIP thread did not stop in time")

    async def drain(self) -> None:
        """Take no new calls (INVITE and OPTIONS are answered 503, so a proxy in front
        sends callers elsewhere) and return once the calls up have ended."""
        if self._endpoint is not None:
            self._endpoint.drain()
        log.info("draining: no new calls; waiting for %d call(s) to end", len(self.sessions))
        await self._idle.wait()
        log.info("drained: no call left")

    async def call(self, uri: str) -> CallResult:
        """Place one outbound call and run the bot on it until it ends."""
        session = await self._place(uri)
        assert session.task is not None
        result = await session.task
        if result is None and session.ring_expired:
            raise SipCallFailed(
                f"{uri} did not answer within {self.settings.sip_ring_timeout_s:g} s")
        if result is None:
            raise SipCallFailed(
                f"{uri} did not answer: SIP {session.end_status} {session.end_reason}".strip())
        return result

    async def _place(self, uri: str, rejoins: RejoinJob | None = None) -> _Session:
        """Dial ``uri`` (its INVITE names the call in ``X-Call-UUID``; for a rejoin it also
        replaces the lost dialog) and start the call's session."""
        endpoint = self.require_endpoint()
        call_uuid = uuid.uuid4().hex
        headers = {CALL_UUID_HEADER: call_uuid}
        if rejoins is not None:
            headers.update({"Replaces": rejoins.rejoin["replaces"], "Require": "replaces"})

        def dial() -> CallLeg:
            leg = endpoint.dial(uri, headers)
            leg.call_uuid = call_uuid
            # Queue the session's start ahead of this call's events (a fast 200 OK could
            # otherwise reach the loop before the dial's result, and be dropped).
            self._post(self._begin, leg, rejoins)
            return leg

        leg = await asyncio.wrap_future(endpoint.submit(dial))
        return self._begin(leg, rejoins)

    async def rejoin(self, job: RejoinJob) -> CallResult | None:
        """Take lost call ``job.call_id`` back from its caller: an INVITE to their Contact
        that replaces the cut-off dialog; the call resumes the conversation. None when the
        caller did not take it (their old dialog is gone: they hung up, or redialled)."""
        try:
            session = await self._place(job.rejoin["uri"], job)
        except RuntimeError as exc:
            log.warning("call %s: cannot call the caller back: %s", job.call_id, exc)
            return None
        assert session.task is not None
        result = await session.task
        if result is None:
            log.info("call %s: the caller did not take the call back (SIP %s %s); their "
                     "redial resumes it", job.call_id, session.end_status, session.end_reason)
        return result

    async def _take_rejoins(self) -> None:
        """Take this node's rejoin jobs from Redis while a call slot is free."""
        settings = self.settings
        live = LiveState(settings.redis_url, recovery_window_s=settings.recovery_window_s,
                         timeout_s=REJOIN_POLL_S + 1.0)
        node_id, redis_down = settings.effective_node_id, False
        tasks: set[asyncio.Task[CallResult | None]] = set()
        try:
            while True:
                endpoint = self._endpoint
                if (endpoint is None or endpoint.draining
                        or len(self.sessions) >= settings.sip_max_calls):
                    await asyncio.sleep(REJOIN_POLL_S)
                    continue
                try:
                    job = await asyncio.to_thread(live.next_rejoin, node_id, REJOIN_POLL_S)
                except LiveStateUnavailable as exc:
                    if not redis_down:
                        log.warning("%s; lost calls are not called back until it returns", exc)
                    redis_down = True
                    await asyncio.sleep(REJOIN_POLL_S)
                    continue
                redis_down = False
                if job is None:
                    continue
                if time.time() - job.queued_at > settings.rejoin_timeout_s:
                    log.info("call %s: too late to call the caller back; left to their redial",
                             job.call_id)
                    continue
                task = asyncio.create_task(self.rejoin(job), name=f"sip-rejoin-{job.call_id}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            await asyncio.to_thread(live.close)

    def require_endpoint(self) -> SipEndpoint:
        if self._endpoint is None:
            raise RuntimeError("the SIP worker is not started")
        return self._endpoint

    # ------------------------------------------------------------------ PJSIP thread → loop

    def _post(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def incoming(self, leg: CallLeg) -> None:
        self._post(self._begin, leg)

    def confirmed(self, leg: CallLeg) -> None:
        self._post(self._on_confirmed, leg.key)

    def disconnected(self, leg: CallLeg, status: int, reason: str) -> None:
        self._post(self._on_disconnected, leg.key, status, reason)

    def dtmf(self, leg: CallLeg, digit: str) -> None:
        self._post(self._on_dtmf, leg.key, digit)

    def transfer_status(self, leg: CallLeg, status: int, final: bool) -> None:
        self._post(self._on_transfer_status, leg.key, status, final)

    def rtp_timeout(self, leg: CallLeg) -> None:
        self._post(self._on_rtp_timeout, leg.key)

    def replaced(self, leg: CallLeg) -> None:
        """The caller replaced the dialog (an attended transfer to the bot, say): the call
        goes on in the new one."""

    # ------------------------------------------------------------------ loop side

    def _begin(self, leg: CallLeg, rejoins: RejoinJob | None = None) -> _Session:
        session = self.sessions.get(leg.key)
        if session is None:
            session = self.sessions[leg.key] = _Session(leg, rejoins=rejoins)
            self._idle.clear()
            if leg.direction == "inbound":  # answered: its keys must find a handle at once
                session.handle = self._start_call(session)
            session.task = asyncio.create_task(self._run(session), name=f"sip-call-{leg.key}")
        return session

    def _on_confirmed(self, key: int) -> None:
        session = self.sessions.get(key)
        if session is not None:
            session.confirmed.set()

    def _on_disconnected(self, key: int, status: int, reason: str) -> None:
        session = self.sessions.get(key)
        if session is None:
            return
        session.end_status, session.end_reason = status, reason
        session.disconnected.set()
        session.leg.source.close()

    def _on_dtmf(self, key: int, digit: str) -> None:
        session = self.sessions.get(key)
        if session is None:
            return
        if session.handle is None:  # an outbound call not answered yet
            log.warning("SIP call %s: keypad %r before the answer, ignored", key, digit)
        else:
            session.handle.keypad(digit)

    def _on_transfer_status(self, key: int, status: int, final: bool) -> None:
        session = self.sessions.get(key)
        if session is not None:
            session.transfer_status = status
            if final:
                session.transfer_final.set()

    def _on_rtp_timeout(self, key: int) -> None:
        session = self.sessions.get(key)
        if session is not None:
            session.rtp_timed_out = True
            session.leg.source.end_reason = "rtp_timeout"

    async def _run(self, session: _Session) -> CallResult | None:
        leg = session.leg
        try:
            if leg.direction == "outbound":
                if not await self._wait_answered(session):
                    return None
            return await self._converse(session)
        except Exception:
            log.exception("SIP call %s failed", leg.key)
            return None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._end(session))
            self.sessions.pop(leg.key, None)
            if not self.sessions:
                self._idle.set()

    async def _wait_answered(self, session: _Session) -> bool:
        confirmed = asyncio.create_task(session.confirmed.wait())
        gone = asyncio.create_task(session.disconnected.wait())
        try:
            await asyncio.wait({confirmed, gone}, timeout=self.settings.sip_ring_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            confirmed.cancel()
            gone.cancel()
        session.ring_expired = not (session.confirmed.is_set() or session.disconnected.is_set())
        return session.confirmed.is_set() and not session.disconnected.is_set()

    def _start_call(self, session: _Session) -> CallHandle:
        leg, job = session.leg, session.rejoins
        account_uri = f"sip:{self.settings.sip_username or 'switchboard'}@{self.settings.sip_host}"
        if job is not None:  # the caller's call again, as they placed it
            caller, callee = job.rejoin.get("caller"), job.rejoin.get("callee")
        elif leg.direction == "inbound":
            caller, callee = leg.remote_uri, leg.local_uri
        else:
            caller, callee = account_uri, leg.remote_uri
        return self.node.start_call(CallRequest(
            transport="sip", source=leg.source, sink=leg.sink, caller=caller, callee=callee,
            metadata={"sip_call_id": leg.sip_call_id,
                      "direction": "rejoin" if job else leg.direction,
                      "source_address": leg.source_address,
                      "sip_transport": leg.signalling or None, "srtp": leg.srtp},
            control=_SipControl(self, session), call_id=leg.call_uuid or None,
            handoff_target=self.settings.sip_transfer_uri or None,
            rejoin=({**leg.rejoin, "caller": caller or "", "callee": callee or ""}
                    if leg.rejoin else None),
            caller_key=None if job is None else job.caller,
            resumes=None if job is None else job.call_id,
        ))

    async def _converse(self, session: _Session) -> CallResult:
        if session.handle is None:
            session.handle = self._start_call(session)
        handle = session.handle
        try:
            with contextlib.suppress(Exception):  # a failed setup is raised by result()
                session.call_id = await handle.started()
                log.info("SIP call %s is call %s (setup %.0f ms)", session.leg.key,
                         session.call_id, (time.perf_counter() - session.started) * 1000)
                if self.settings.sip_record:
                    self._start_recording(session, session.call_id)
            result = await handle.result()
        except asyncio.CancelledError:  # the worker is stopping
            handle.cancel()
            raise
        if session.rtp_timed_out:
            await asyncio.to_thread(self.node.calls.add_event, result.call_id, "rtp_timeout",
                                    {"timeout_s": self.settings.sip_rtp_timeout_s})
        if session.leg.source.dropped_frames:
            log.warning("call %s: %d ms of caller audio dropped after event-loop stalls",
                        result.call_id, session.leg.source.dropped_frames * FRAME_MS)
        return result

    def _start_recording(self, session: _Session, call_id: str) -> None:
        path = self.settings.data_dir / "recordings" / f"{call_id}.wav"
        try:
            recording = CallRecording(path, SAMPLE_RATE)
        except Exception:
            log.exception("call %s: cannot record to %s", call_id, path)
            return
        session.recording = recording
        session.leg.source.tap = recording.caller
        session.leg.sink.tap = recording.bot

    async def _end(self, session: _Session) -> None:
        """Hang up if the call is still up, then close and store the recording."""
        leg = session.leg
        leg.source.tap = leg.sink.tap = None
        if not session.disconnected.is_set() and self._endpoint is not None:
            endpoint = self._endpoint
            with contextlib.suppress(RuntimeError):
                await asyncio.wrap_future(endpoint.submit(lambda: endpoint.hangup(leg.key)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.disconnected.wait(), HANGUP_WAIT_S)
        recording = session.recording
        if recording is not None and session.call_id is not None:
            await asyncio.to_thread(recording.close)
            await asyncio.to_thread(self.node.calls.set_recording, session.call_id,
                                    str(recording.path))


class _SipControl:
    """What the worker can do to one SIP call beyond its media: REFER it elsewhere."""

    def __init__(self, worker: SipWorker, session: _Session) -> None:
        self.worker = worker
        self.session = session

    async def transfer(self, call_id: str, target: str) -> bool:
        """REFER the caller to ``target``; True once the transfer's final NOTIFY says 2xx."""
        session = self.session
        if session.disconnected.is_set():
            return False
        endpoint = self.worker.require_endpoint()
        key = session.leg.key
        try:
            await asyncio.wrap_future(
                endpoint.submit(lambda: endpoint.transfer(key, target, call_id)))
        except RuntimeError as exc:
            log.warning("call %s: transfer to %s failed: %s", call_id, target, exc)
            return False
        transfer_done = asyncio.create_task(session.transfer_final.wait())
        gone = asyncio.create_task(session.disconnected.wait())
        await asyncio.wait({transfer_done, gone}, timeout=TRANSFER_WAIT_S,
                           return_when=asyncio.FIRST_COMPLETED)
        transfer_done.cancel()
        gone.cancel()
        log.info("call %s: transferred to %s (status %s)", call_id, target,
                 session.transfer_status or "none")
        await asyncio.to_thread(self.worker.node.calls.add_event, call_id, "transfer",
                                {"uri": target, "status": session.transfer_status})
        return 200 <= session.transfer_status < 300


async def run_worker(node: CallHost) -> None:
    """Serve calls until SIGTERM or SIGINT (the calls up are ended), or until the calls up
    have ended after ``DRAIN_SIGNAL``."""
    stop = asyncio.Event()
    worker = SipWorker(node)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_drain_signal(worker.drain, stop.set)
    await worker.serve(stop)
