"""The records the conversation core produces: one per turn, stored as the call goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class TurnRecord:
    """A turn as the pipeline produces it, before it is stored."""

    speaker: str
    text: str
    started_at: datetime
    ended_at: datetime | None = None
    intent: str | None = None
    confidence: float | None = None
    barge_in: bool = False
    endpoint_ms: float | None = None
    stt_ms: float | None = None
    dialog_ms: float | None = None
    tts_ms: float | None = None
    response_ms: float | None = None
    slots: dict[str, Any] | None = None
    """The dialog's slots after the reply this turn belongs to, when known."""
    expects: str | None = None
    """The slot the bot asks for after this turn (bot turns)."""
    extra: dict[str, Any] = field(default_factory=dict)
