"""The long-lived parts one node shares across its calls: database, speech engines, dialog."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from analytics.celery_app import create_app as create_celery_app
from analytics.tasks import enqueue_call_analysis
from dialog.config import RasaConfig
from dialog.rasa_client import RasaClient
from dialog.resume import resume_opening
from dialog.service import dialog_available
from speech.config import SttConfig, TtsConfig
from speech.service.engines import RemoteSTT, RemoteTTS
from speech.service.pool import SpeechPool
from speech.service.protocol import READY_LINE, Address, parse_addresses
from speech.vad import SileroDetector
from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.logs import CALL_ID
from switchboard.base.metrics import CALLS_ACTIVE, CALLS_ENDED, RECOVERIES, TURN_STAGE
from switchboard.base.settings import Settings
from switchboard.conversation.call import CallHandle, CallRequest
from switchboard.conversation.engines import (
    DialogEngine,
    EngineError,
    SpeechToText,
    TextToSpeech,
    start_engine,
)
from switchboard.conversation.pipeline import CallResult, ConversationPipeline
from switchboard.conversation.recorder import CallRecorder
from switchboard.conversation.tracing import CallTracing
from switchboard.conversation.turn_detector import TurnTaking
from switchboard.conversation.turns import TurnRecord
from switchboard.desk import NodeDesk
from switchboard.storage.database import prepare_database
from switchboard.storage.live import (
    CallState,
    LiveState,
    LiveStateUnavailable,
    LiveWriter,
    TurnEvent,
)
from switchboard.storage.repository import AuditRepository, CallIdTaken, CallRepository
from switchboard.storage.spool import ReplayResult, SpooledCalls, WriteSpool

log = logging.getLogger(__name__)


def spooled_calls(settings: Settings, sessions: sessionmaker[Session]) -> SpooledCalls:
    """The calls' writes, spooled in ``data_dir/spool`` while the database is away."""
    return SpooledCalls(CallRepository(sessions),
                        WriteSpool(settings.data_dir / "spool", settings.worker_name or "node"))


def stt_config(settings: Settings) -> SttConfig:
    """The ``stt_*`` settings; models joined from several packages cached in data_dir/models."""
    return SttConfig(
        model=settings.stt_model,
        device=settings.stt_device,
        compute_type=settings.stt_compute_type,
        language=settings.stt_language,
        beam_size=settings.stt_beam_size,
        cpu_threads=settings.stt_cpu_threads,
        batch_size=settings.stt_batch_size,
        cache_dir=settings.data_dir / "models",
    )


def tts_config(settings: Settings) -> TtsConfig:
    """The ``tts_*`` settings."""
    return TtsConfig(voice=settings.tts_voice, device=settings.tts_device,
                     cpu_threads=settings.tts_cpu_threads)


IPC_PATH_MAX = 100
"""Unix socket paths are limited to about 107 bytes."""


def local_speech_address(settings: Settings, name: str) -> Address:
    """Where a speech server of this node listens: an ipc socket in data_dir/run (or in
    the temporary directory when that path is too long for a Unix socket)."""
    path = settings.data_dir / "run" / f"{name}.sock"
    if len(str(path)) > IPC_PATH_MAX:
        digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"switchboard-{digest}" / f"{name}.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return Address(f"ipc://{path}")


def speech_server_process(settings: Settings, address: Address, name: str) -> ChildProcess:
    """``switchboard speech-server`` on ``address``, healthy once its models are warm."""
    log_path = settings.data_dir / "logs" / f"{name}.log"
    return ChildProcess(
        f"speech server {name}",
        [sys.executable, "-m", "switchboard", "speech-server", "--bind", str(address)],
        log_path=log_path, healthy=log_probe(log_path, READY_LINE),
        env={"SWITCHBOARD_WORKER_NAME": name, "SWITCHBOARD_STT_DEVICE": settings.stt_device,
             "SWITCHBOARD_TTS_DEVICE": settings.tts_device},
    )


@asynccontextmanager
async def speech_ready(settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` naming speech servers: the configured ones, or one started for the
    duration (one-off commands: simulate, call, benches)."""
    if settings.speech_servers:
        yield settings
        return
    address = local_speech_address(settings, f"speech-{os.getpid()}")
    server = speech_server_process(settings, address, "speech")
    print("no speech server configured (SWITCHBOARD_SPEECH_SERVERS); starting one for this "
          "run...", flush=True)
    await asyncio.to_thread(server.__enter__)
    try:
        yield settings.model_copy(update={"speech_servers": str(address)})
    finally:
        await asyncio.to_thread(server.stop)


@asynccontextmanager
async def services_ready(settings: Settings) -> AsyncIterator[Settings]:
    """:func:`dialog_ready` and :func:`speech_ready`: what a one-off command needs."""
    async with dialog_ready(settings) as with_dialog, speech_ready(with_dialog) as ready:
        yield ready


def speech_pool(settings: Settings) -> SpeechPool:
    """A client of the speech servers ``settings`` names."""
    addresses = parse_addresses(settings.speech_servers)
    if not addresses:
        raise EngineError(
            "no speech servers configured: set SWITCHBOARD_SPEECH_SERVERS "
            "(e.g. tcp://10.0.0.5:7100) or start the node with `switchboard run`")
    return SpeechPool(addresses, secret=settings.speech_secret,
                      request_timeout_s=settings.speech_request_timeout_s,
                      dead_after_s=settings.speech_dead_after_s)


def rasa_config(settings: Settings) -> RasaConfig:
    """The ``rasa_*`` settings, with the database and Redis the Rasa children use."""
    return RasaConfig(
        venv=settings.rasa_venv,
        data_dir=settings.data_dir,
        url=settings.rasa_url,
        rasa_port=settings.rasa_port,
        interface=settings.rasa_interface,
        action_port=settings.action_port,
        database_url=settings.effective_database_url,
        redis_url=settings.redis_url,
        api_token=settings.rasa_api_token,
        timeout_s=settings.rasa_timeout_s,
        start_timeout_s=settings.rasa_start_timeout_s,
    )


def with_rasa(settings: Settings, rasa: RasaConfig) -> Settings:
    """``settings`` pointing at the Rasa server ``rasa`` names, with its API token."""
    return settings.model_copy(update={"rasa_url": rasa.url, "rasa_api_token": rasa.api_token})


@asynccontextmanager
async def dialog_ready(settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` naming a Rasa server that answers: the configured one, or one started
    for the duration (one-off commands: simulate, call, benches)."""
    async with dialog_available(rasa_config(settings)) as rasa:
        yield with_rasa(settings, rasa)


RESUMABLE_ENDS = frozenset({"node_lost", "cancelled", "worker_died"})
"""Ends of a call that cut the caller off (its node lost, shut down under it, or its
process crashed): calling again within the recovery window resumes its conversation."""
ANONYMOUS = frozenset({"anonymous", "unknown", "restricted", "unavailable"})
_SIP_USER = re.compile(r"sips?:([^@;>\s]+)@", re.IGNORECASE)


def caller_identity(caller: str | None) -> str | None:
    """Who calls, as a key for finding their earlier call: a SIP URI's user part
    (``"Ann" <sip:1001@pbx>`` → ``1001``), lower case; None for anonymous callers."""
    if not caller:
        return None
    match = _SIP_USER.search(caller)
    who = (match.group(1) if match else caller).strip().lower()
    return None if not who or who in ANONYMOUS else who


STAGES = ("endpoint", "stt", "dialog", "tts", "response")


def observe_stages(record: TurnRecord) -> None:
    """A bot reply's stages into the turn latency histograms."""
    if record.speaker != "bot":
        return
    for stage in STAGES:
        value = getattr(record, f"{stage}_ms")
        if value is not None:
            TURN_STAGE.labels(stage).observe(value / 1000)


@dataclass
class Node:
    """Everything a call needs that outlives the call."""

    settings: Settings
    sessions: sessionmaker[Session]
    calls: SpooledCalls
    stt: SpeechToText
    tts: TextToSpeech
    dialog: DialogEngine
    analytics: Celery | None = None
    owned: list[SpeechToText | TextToSpeech | DialogEngine] = field(default_factory=list)
    """Engines this node created, and so closes; engines passed in belong to the caller."""
    speech: SpeechPool | None = None
    """The speech servers' client, when this node made one."""
    live: LiveWriter | None = None
    """Where each call's state goes after every turn (Redis), when ``redis_url`` is set."""
    tracing: CallTracing | None = None
    """Each call's trace (OpenTelemetry), when ``otlp_endpoint`` is set."""
    desk: NodeDesk | None = None
    """The agents' desk (handoffs wait for an agent), with Redis and ``desk_enabled``."""
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _replaying: asyncio.Task[None] | None = None

    @property
    def node_id(self) -> str:
        return self.settings.effective_node_id

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        stt: SpeechToText | None = None,
        tts: TextToSpeech | None = None,
        dialog: DialogEngine | None = None,
        analytics: bool = True,
        desk: bool = False,
    ) -> Node:
        """Migrate the database and connect to the speech servers (``speech_servers``):
        this process loads no speech model. Engines passed in are used instead.

        With ``analytics``, every ended call is queued for post-call analysis (Celery).
        With ``desk`` (a process that answers callers: the web app, a SIP worker), Redis
        and ``desk_enabled``, a handoff waits for an agent, whose browser leg this
        process answers."""
        sessions = prepare_database(settings.effective_database_url, demo_data=settings.demo_data)
        owned: list[SpeechToText | TextToSpeech | DialogEngine] = []
        pool = speech_pool(settings) if stt is None or tts is None else None
        if pool is not None:
            try:
                if stt is None:
                    stt = start_engine("speech service (STT)", partial(RemoteSTT, pool))
                if tts is None:
                    tts = start_engine("speech service (TTS)", partial(RemoteTTS, pool))
            except BaseException:
                pool.close()
                raise
        assert stt is not None and tts is not None
        if dialog is None:
            rasa = rasa_config(settings)
            dialog = RasaClient(rasa.url, timeout_s=rasa.timeout_s, api_token=rasa.api_token)
            owned.append(dialog)
        celery = create_celery_app(settings) if analytics else None
        live = (LiveWriter(LiveState(settings.redis_url,
                                     recovery_window_s=settings.recovery_window_s))
                if settings.redis_url else None)
        tracing = CallTracing(settings) if settings.otlp_endpoint else None
        agents = None
        if desk and live is not None and settings.desk_enabled:
            from telephony.webrtc.agent import BrowserAgentLegs

            agents = NodeDesk(settings, BrowserAgentLegs(settings), live)
        return cls(settings, sessions, spooled_calls(settings, sessions), stt, tts, dialog,
                   celery, owned, pool, live, tracing, agents)

    def start_call(self, request: CallRequest) -> CallHandle:
        """Store a new call and run the conversation on the request's media; the handle
        takes keypad keys, a hangup or a transfer at once and gives the result."""
        handle = CallHandle(request)
        handle.run(self._run_call)
        return handle

    async def _run_call(self, handle: CallHandle) -> CallResult:
        request = handle.request
        began_ns = time.time_ns()
        who = (request.caller_key if request.caller_key is not None
               else caller_identity(request.caller))
        prior = await asyncio.to_thread(self._cut_off_call, request.transport, who,
                                        request.resumes)
        conversation_id, greet = request.conversation_id, request.greet
        if prior is not None and conversation_id is None:
            conversation_id, greet = prior.conversation_id, False
        metadata = {**request.metadata, **({} if prior is None
                                           else {"resumed_from": prior.call_id})}
        info = {"transport": request.transport, "caller": request.caller,
                "callee": request.callee, **metadata}
        call_id = await asyncio.to_thread(
            self._store_call, request.call_id,
            transport=request.transport, caller=request.caller, callee=request.callee,
            metadata=metadata, worker=self.settings.worker_name or None, node=self.node_id,
        )
        CALL_ID.set(call_id)  # every log line of the call, from here on, names it
        if self.calls.spooled(call_id):
            self._replay_soon()
        state = CallState(
            call_id=call_id, node=self.node_id, transport=request.transport,
            conversation_id=conversation_id or call_id, caller=who,
            sip_call_id=request.metadata.get("sip_call_id"), rejoin=request.rejoin,
            caller_label=request.caller or "",
            owner="" if self.desk is None else self.desk.owner)
        desk = None if self.desk is None else self.desk.for_call(
            state, can_transfer=request.control is not None and bool(request.handoff_target))
        recorder = CallRecorder(self.calls, call_id)
        try:
            pipeline = ConversationPipeline(
                call_id=call_id, source=request.source, sink=request.sink,
                stt=self.stt, tts=self.tts, dialog=self.dialog, vad=SileroDetector,
                recorder=recorder,
                turn_taking=TurnTaking.from_settings(self.settings), metadata=info,
                conversation_id=conversation_id, greet=greet,
                opening=None if prior is None else resume_opening(
                    prior.slots, prior.last_intent, prior.last_bot_text),
                expect=None if prior is None else prior.expects, desk=desk,
            )
        except Exception as exc:
            await asyncio.to_thread(
                self.calls.end_call, call_id, reason=f"setup_failed: {exc}"[:64], status="failed"
            )
            raise
        if prior is not None:  # carried over, so that a second cut-off resumes as well
            state.resumed_from, state.turns, state.slots = prior.call_id, prior.turns, dict(
                prior.slots)
            state.last_intent, state.expects = prior.last_intent, prior.expects
            state.last_bot_text = prior.last_bot_text
            RECOVERIES.labels("rejoin" if request.resumes else "redial").inc()
            log.info("call %s resumes conversation %s of call %s (cut off: %s)", call_id,
                     conversation_id, prior.call_id, prior.end_reason or "node lost")
        self._track(handle, state)
        handle.on_turn(observe_stages)
        span = None if self.tracing is None else self.tracing.start(
            call_id, began_ns, transport=request.transport, node=self.node_id,
            conversation_id=pipeline.conversation_id,
            resumed_from="" if prior is None else prior.call_id)
        if span is not None:
            handle.on_turn(span.turn)
        handle.attach(call_id, pipeline)
        log.info("call %s started (%s from %s)", call_id, request.transport,
                 request.caller or "unknown")
        active = CALLS_ACTIVE.labels(request.transport)
        active.inc()
        reason, handoff = "failed", None
        try:
            result = await pipeline.run()
            reason, handoff = result.reason, result.handoff
        except asyncio.CancelledError:
            reason = "cancelled"  # the node stops under it: resumable on a redial
            raise
        finally:
            active.dec()
            CALLS_ENDED.labels(request.transport, reason).inc()
            self._ended(state, reason, handoff)
            if span is not None:
                span.end(reason)
        log.info("call %s ended: %s", call_id, result.reason)
        if state.agent:
            await asyncio.to_thread(self._agent_took_call, call_id, state.agent,
                                    result.transfer_to)
        if not recorder.end_stored:  # spooled: its analysis is queued once it is written
            self._replay_soon()
        elif self.analytics is not None:
            self._queue_analysis(call_id)
        return result

    def replay_spooled(self) -> None:
        """Write what an earlier process left in the spool (call from the running loop,
        when the process starts)."""
        if self.calls.spool.pending():
            self._replay_soon()

    def _replay_soon(self) -> None:
        """Write the spooled call writes once the database answers (every
        ``spool_retry_s``), then queue the analysis of the calls whose end they held."""
        if self._replaying is None or self._replaying.done():
            self._replaying = asyncio.create_task(self._replay(), name="spool-replay")

    async def _replay(self) -> None:
        while True:
            writing = asyncio.ensure_future(asyncio.to_thread(self.calls.replay))
            try:
                result = await asyncio.shield(writing)
            except asyncio.CancelledError:  # stopping: finish this pass, queue its analyses
                with contextlib.suppress(Exception):
                    self._analyse_replayed(await writing)
                raise
            except Exception:
                log.exception("replaying the spooled call writes failed")
            else:
                self._analyse_replayed(result)
                if not result.left and not self.calls.spool.pending():
                    return
            await asyncio.sleep(self.settings.spool_retry_s)

    def _analyse_replayed(self, result: ReplayResult) -> None:
        if self.analytics is not None:
            for call_id in result.ended:
                self._queue_analysis(call_id)

    def _agent_took_call(self, call_id: str, agent: str, transfer_to: str | None) -> None:
        """The call is the agent's in its record; a transfer they asked for is audited
        (accepting, listening and barging are audited by the console)."""
        try:
            self.calls.set_agent(call_id, agent)
        except (SQLAlchemyError, KeyError) as exc:
            log.error("call %s: could not store its agent %s: %s", call_id, agent, exc)
        if transfer_to:
            AuditRepository(self.sessions).record(agent, "desk.transfer", target=call_id,
                                                  detail={"to": transfer_to})

    def _store_call(self, given: str | None, **fields: Any) -> str:
        """Store the new call under ``given`` (the transport's id for it), or under a new
        id when there is none or an earlier call has it (a trunk that repeats its ids)."""
        try:
            return self.calls.create_call(call_id=given or uuid.uuid4().hex, **fields)
        except CallIdTaken:
            log.warning("call id %s is taken by an earlier call; this call gets a new one",
                        given)
            return self.calls.create_call(call_id=uuid.uuid4().hex, **fields)

    def _cut_off_call(self, transport: str, who: str | None, resumes: str | None = None
                      ) -> CallState | None:
        """The caller's latest call (or the call ``resumes`` names), if a lost node (or a
        node shut down under it) cut it off within the recovery window; None without Redis
        or when Redis does not answer (the call then starts afresh)."""
        if self.live is None or (who is None and resumes is None):
            return None
        live = self.live.live
        try:
            prior = (live.call(resumes) if resumes is not None
                     else live.latest_call(transport, who or ""))
            if prior is None or time.time() - prior.updated_at > live.recovery_window_s:
                return None
            if prior.active:
                return prior if self._node_gone(prior.node) else None
        except LiveStateUnavailable as exc:
            self.live.unavailable(exc)
            return None
        return prior if prior.end_reason in RESUMABLE_ENDS else None

    def _node_gone(self, node: str) -> bool:
        """Whether ``node`` is lost. A redial can reach this node before the lost node's
        heartbeat has expired: a heartbeat not renewed for two beats is waited out (at
        most ``heartbeat_ttl_s``)."""
        assert self.live is not None
        live, settings = self.live.live, self.settings
        left = live.heartbeat_left(node)
        if left is None:
            return True
        if node == self.node_id or settings.heartbeat_ttl_s - left < (
                2 * settings.heartbeat_interval_s):
            return False  # it beats: the caller has two calls up at once
        time.sleep(min(left, settings.heartbeat_ttl_s) + 0.05)
        return live.heartbeat_left(node) is None

    def _track(self, handle: CallHandle, state: CallState) -> None:
        """Write the call's state now and after every turn."""
        writer = self.live
        if writer is None:
            return

        def turn(record: TurnRecord) -> None:
            state.turns += 1
            if record.slots:  # the latest value of each: an answered order's slot is
                state.slots.update(record.slots)  # cleared, the caller still asked about it
            if record.speaker == "bot":
                state.last_bot_text, state.expects = record.text, record.expects
            elif record.intent:
                state.last_intent = record.intent
            writer.put(state, TurnEvent(
                call_id=state.call_id, seq=state.turns, speaker=record.speaker,
                text=record.text, at=record.started_at.timestamp(), intent=record.intent))

        handle.on_turn(turn)
        writer.put(state)

    def _ended(self, state: CallState, reason: str,
               handoff: dict[str, object] | None = None) -> None:
        if self.live is not None:
            state.state, state.end_reason, state.handoff = "ended", reason, handoff
            self.live.put(state)

    def _queue_analysis(self, call_id: str) -> None:
        """Off the call's path: the transport hangs up without waiting for the broker."""
        task = asyncio.create_task(
            asyncio.to_thread(enqueue_call_analysis, call_id, celery=self.analytics)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        if self._replaying is not None:  # what is left stays spooled for the next start
            self._replaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replaying
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for engine in self.owned:
            await engine.aclose()
        if self.desk is not None:
            await asyncio.to_thread(self.desk.close)
        if self.live is not None:
            await asyncio.to_thread(self.live.close)
            self.live.live.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        if self.speech is not None:
            await asyncio.to_thread(self.speech.close)
