"""The long-lived parts one node shares across its calls: database, speech engines, dialog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from analytics.celery_app import create_app as create_celery_app
from analytics.tasks import enqueue_call_analysis
from dialog.rasa_client import DialogEngine, RasaClient
from speech.stt import SpeechToText, WhisperSTT
from speech.tts import PiperTTS, TextToSpeech
from switchboard.pipeline.conversation import CallResult, ConversationPipeline, TurnTaking
from switchboard.pipeline.media import AudioSink, AudioSource
from switchboard.pipeline.recorder import CallRecorder
from switchboard.settings import Settings
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository, TurnRecord

log = logging.getLogger(__name__)


@dataclass
class Node:
    """Everything a call needs that outlives the call."""

    settings: Settings
    sessions: sessionmaker[Session]
    calls: CallRepository
    stt: SpeechToText
    tts: TextToSpeech
    dialog: DialogEngine
    analytics: Celery | None = None
    owned: list[object] = field(default_factory=list)
    """Engines this node created, and so closes; engines passed in belong to the caller."""
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        stt: SpeechToText | None = None,
        tts: TextToSpeech | None = None,
        dialog: DialogEngine | None = None,
        analytics: bool = True,
    ) -> Node:
        """Migrate the database and load the speech models (once per process).

        With ``analytics``, every ended call is queued for post-call analysis (Celery)."""
        sessions = prepare_database(settings.effective_database_url, demo_data=settings.demo_data)
        owned: list[object] = []
        if stt is None:
            whisper = WhisperSTT.from_settings(settings)
            whisper.warm_up()
            stt = whisper
            owned.append(whisper)
        if tts is None:
            piper = PiperTTS.from_settings(settings)
            piper.warm_up()
            tts = piper
            owned.append(piper)
        if dialog is None:
            dialog = RasaClient(settings.rasa_url, timeout_s=settings.rasa_timeout_s,
                                api_token=settings.rasa_api_token)
            owned.append(dialog)
        celery = create_celery_app(settings) if analytics else None
        return cls(settings, sessions, CallRepository(sessions), stt, tts, dialog, celery, owned)

    async def run_call(
        self,
        *,
        source: AudioSource,
        sink: AudioSink,
        transport: str,
        caller: str | None = None,
        callee: str | None = None,
        metadata: dict[str, Any] | None = None,
        pipeline_ready: Callable[[ConversationPipeline], None] | None = None,
        conversation_id: str | None = None,
        greet: bool = True,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> CallResult:
        """Store a new call and run the conversation pipeline on the given media.

        ``pipeline_ready`` gets the pipeline before it starts (to deliver keypad digits);
        ``conversation_id``/``greet``/``on_turn`` as in :class:`ConversationPipeline`."""
        info = {"transport": transport, "caller": caller, "callee": callee, **(metadata or {})}
        call_id = await asyncio.to_thread(
            self.calls.create_call,
            transport=transport, caller=caller, callee=callee, metadata=metadata,
            worker=self.settings.worker_name or None,
        )
        try:
            pipeline = ConversationPipeline(
                call_id=call_id,
                source=source,
                sink=sink,
                stt=self.stt,
                tts=self.tts,
                dialog=self.dialog,
                recorder=CallRecorder(self.calls, call_id),
                turn_taking=TurnTaking.from_settings(self.settings),
                metadata=info,
                conversation_id=conversation_id,
                greet=greet,
                on_turn=on_turn,
            )
        except Exception as exc:
            await asyncio.to_thread(
                self.calls.end_call, call_id, reason=f"setup_failed: {exc}"[:64], status="failed"
            )
            raise
        if pipeline_ready is not None:
            pipeline_ready(pipeline)
        log.info("call %s started (%s from %s)", call_id, transport, caller or "unknown")
        result = await pipeline.run()
        log.info("call %s ended: %s", call_id, result.reason)
        if self.analytics is not None:
            self._queue_analysis(call_id)
        return result

    def _queue_analysis(self, call_id: str) -> None:
        """Off the call's path: the transport hangs up without waiting for the broker."""
        task = asyncio.create_task(
            asyncio.to_thread(enqueue_call_analysis, call_id, celery=self.analytics)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for engine in self.owned:
            close = getattr(engine, "aclose", None) or getattr(engine, "close", None)
            if close is None:
                continue
            outcome = close()
            if hasattr(outcome, "__await__"):
                await outcome
