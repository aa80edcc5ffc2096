"""What a transport needs from the node that hosts its calls.

The SIP worker and the WebRTC gateway (``telephony/``) and the web app (``admin/``) are
given an object with this shape (``switchboard.node.Node``); they never build one, so they
need neither the engines nor the analytics wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from switchboard.base.settings import Settings
from switchboard.conversation.media import AudioSink, AudioSource
from switchboard.conversation.pipeline import CallResult, ConversationPipeline
from switchboard.conversation.turns import TurnRecord
from switchboard.storage.repository import CallRepository


class CallHost(Protocol):
    """Stores calls and runs the conversation pipeline on a transport's media."""

    settings: Settings
    sessions: sessionmaker[Session]
    calls: CallRepository

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
        """Store a new call and run it to its end on ``source``/``sink``."""
        ...

    async def aclose(self) -> None:
        """Wait for background work of ended calls, close the engines the host owns."""
        ...
