"""Building stored calls with known timing for the analytics tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from switchboard.conversation.turns import TurnRecord
from switchboard.storage.models import Call
from switchboard.storage.repository import CallRepository


@dataclass
class Said:
    """One turn: who, what, when (seconds after the call started) and for how long."""

    speaker: str
    text: str
    at_s: float
    length_s: float
    intent: str | None = None
    barge_in: bool = False
    response_ms: float | None = None
    stt_ms: float | None = None


@dataclass
class CallSpec:
    start: datetime
    length_s: float
    reason: str
    turns: list[Said] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: str = "ended"
    event_at_s: list[float] | None = None
    """When each event happened (seconds after the start); default: when stored."""


def store_call(sessions: sessionmaker[Session], spec: CallSpec) -> str:
    """Store ``spec`` through the repository, then pin its start and end times."""
    calls = CallRepository(sessions)
    call_id = calls.create_call(transport="sip", caller="+15550100")
    for said in spec.turns:
        start = spec.start + timedelta(seconds=said.at_s)
        calls.add_turn(call_id, TurnRecord(
            speaker=said.speaker, text=said.text, started_at=start,
            ended_at=start + timedelta(seconds=said.length_s), intent=said.intent,
            barge_in=said.barge_in, response_ms=said.response_ms, stt_ms=said.stt_ms,
        ))
    for kind, data in spec.events:
        calls.add_event(call_id, kind, data)
    calls.end_call(call_id, reason=spec.reason, status=spec.status)
    with sessions() as session:
        call = session.get(Call, call_id)
        assert call is not None
        call.started_at = spec.start
        call.ended_at = spec.start + timedelta(seconds=spec.length_s)
        for event, at_s in zip(call.events, spec.event_at_s or [], strict=False):
            event.at = spec.start + timedelta(seconds=at_s)
        session.commit()
    return call_id


def order_call(start: datetime, *, reason: str = "bot_hangup",
               caller_opening: str = "Hi, I want to check on my order.") -> CallSpec:
    """A typical 30 s call: greeting, request, order number, answer, goodbye."""
    return CallSpec(
        start=start, length_s=30.0, reason=reason,
        turns=[
            Said("bot", "Hello, how can I help?", 0.0, 2.0),
            Said("caller", caller_opening, 3.0, 2.0, intent="check_order", stt_ms=200.0),
            Said("bot", "Sure, what's your order number?", 5.5, 2.0, response_ms=500.0),
            Said("caller", "It's 48213.", 9.0, 1.5, intent="inform_order_number",
                 stt_ms=220.0),
            Said("bot", "Your headphones shipped with UPS and arrive Friday.", 11.0, 4.0,
                 response_ms=700.0),
            Said("caller", "Great, thanks a lot!", 14.0, 1.5, intent="thank", barge_in=True,
                 stt_ms=180.0),
            Said("bot", "You're welcome. Goodbye!", 16.0, 2.0, response_ms=900.0),
        ],
        events=[("barge_in", {"at_ms": 14000})],
    )


def desk_call(start: datetime, *, taken: bool, reason: str = "agent_hangup") -> CallSpec:
    """A caller asks for a person and waits 20 s: an agent takes the call for 40 s (then
    hangs up), or nobody does and the caller hangs up."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("handoff", {"queue": "agents"}), ("queued", {"position": 1}),
        ("queue_left", {"outcome": "agent" if taken else "abandoned", "waited_ms": 20000})]
    at = [6.0, 7.0, 27.0]
    if taken:
        events += [("agent_joined", {"agent": "ann"}),
                   ("agent_request", {"agent": "ann", "request": "hangup"})]
        at += [28.0, 68.0]
    return CallSpec(
        start=start, length_s=68.0 if taken else 27.0, reason=reason if taken
        else "caller_hangup", events=events, event_at_s=at,
        turns=[Said("bot", "Hello, how can I help?", 0.0, 2.0),
               Said("caller", "A person please.", 3.0, 1.5, intent="request_agent"),
               Said("bot", "Sure, please hold.", 5.0, 1.5)]
        + ([Said("agent", "Hi, this is Ann.", 29.0, 2.0)] if taken else []))
