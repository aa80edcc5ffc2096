"""SQLAlchemy 2 models: calls, turns, call events, users, the audit log and the demo
orders."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone column that reads back aware UTC datetimes on every backend (SQLite keeps
    no zone and hands back naive values); what is stored is converted to UTC first."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect
                             ) -> datetime | None:
        return None if value is None else as_utc(value)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: UTCDateTime(),
    }


class Call(Base):
    """One conversation with a caller, whatever the transport."""

    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    transport: Mapped[str] = mapped_column(String(16))  # simulate | sip | webrtc
    node: Mapped[str | None] = mapped_column(String(64), index=True)  # node that ran it
    worker: Mapped[str | None] = mapped_column(String(64), index=True)  # process that ran it
    caller: Mapped[str | None] = mapped_column(String(255))
    callee: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(64))
    handoff_target: Mapped[str | None] = mapped_column(String(255))
    recording_path: Mapped[str | None] = mapped_column(String(1024))
    recording_deleted_at: Mapped[datetime | None]  # by the retention policy
    transcript_deleted_at: Mapped[datetime | None]  # its words, by the retention policy
    agent: Mapped[str | None] = mapped_column(String(64), index=True)  # who took it
    disposition: Mapped[str | None] = mapped_column(String(32))  # the agent's wrap-up
    agent_notes: Mapped[str | None] = mapped_column(Text)
    call_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    turns: Mapped[list[Turn]] = relationship(
        back_populates="call", order_by="Turn.seq", cascade="all, delete-orphan"
    )
    events: Mapped[list[CallEvent]] = relationship(
        back_populates="call", order_by="CallEvent.id", cascade="all, delete-orphan"
    )


class Turn(Base):
    """What one side said. Bot turns carry the latencies of the reply they answer."""

    __tablename__ = "turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int]
    speaker: Mapped[str] = mapped_column(String(8))  # caller | bot | agent
    text: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    intent: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    barge_in: Mapped[bool] = mapped_column(Boolean, default=False)
    endpoint_ms: Mapped[float | None] = mapped_column(Float)
    stt_ms: Mapped[float | None] = mapped_column(Float)
    dialog_ms: Mapped[float | None] = mapped_column(Float)
    tts_ms: Mapped[float | None] = mapped_column(Float)
    response_ms: Mapped[float | None] = mapped_column(Float)

    call: Mapped[Call] = relationship(back_populates="turns")


Index("ix_turns_intent_call_id", Turn.intent, Turn.call_id)  # the calls list's intent filter


class CallEvent(Base):
    """Timeline entries of a call: answered, barge-in, dtmf, handoff, error, ended…"""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    call: Mapped[Call] = relationship(back_populates="events")


class User(Base):
    """A console user (admin, supervisor or agent)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


# user names are unique whatever their case ("Alice" and "alice" are one person)
Index("uq_users_username_lower", func.lower(User.username), unique=True)


class ConsoleSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(255))


class ApiToken(Base):
    """A bearer token of an API client, acting with its user's role. Stored as SHA-256."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginFailure(Base):
    """A failed sign-in, counted per user name and per address for the login limit."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    ip: Mapped[str | None] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditEvent(Base):
    """Who did what in the console: user management, sign-ins, tokens (and, from the
    agents' desk, every accept, listen, barge and transfer). Shown to admins."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    """The user name (as typed, for a failed sign-in), or ``system``."""
    action: Mapped[str] = mapped_column(String(40), index=True)
    target: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ip: Mapped[str | None] = mapped_column(String(64))


class Order(Base):
    """A demo order the bot's custom actions can look up."""

    __tablename__ = "orders"

    number: Mapped[str] = mapped_column(String(16), primary_key=True)
    customer_name: Mapped[str] = mapped_column(String(255))
    item: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    carrier: Mapped[str | None] = mapped_column(String(64))
    eta: Mapped[date | None] = mapped_column(Date)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CallAnalysis(Base):
    """The post-call analysis of one call (written by the analytics worker, one row a call)."""

    __tablename__ = "call_analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), unique=True
    )
    analyzed_at: Mapped[datetime] = mapped_column(default=utcnow)
    runs: Mapped[int] = mapped_column(Integer, default=1)  # times computed and stored
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    duration_s: Mapped[float | None] = mapped_column(Float)
    caller_talk_s: Mapped[float] = mapped_column(Float, default=0.0)
    bot_talk_s: Mapped[float] = mapped_column(Float, default=0.0)
    silence_s: Mapped[float | None] = mapped_column(Float)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    caller_turns: Mapped[int] = mapped_column(Integer, default=0)
    bot_turns: Mapped[int] = mapped_column(Integer, default=0)
    barge_ins: Mapped[int] = mapped_column(Integer, default=0)
    fallbacks: Mapped[int] = mapped_column(Integer, default=0)
    intents: Mapped[list[str]] = mapped_column(JSON, default=list)
    sentiment: Mapped[float | None] = mapped_column(Float)  # VADER compound, -1..1
    sentiment_label: Mapped[str | None] = mapped_column(String(8))
    summary: Mapped[str] = mapped_column(Text, default="")
    transcript: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # redacted
    latency: Mapped[dict[str, Any]] = mapped_column(default=dict)
    redactions: Mapped[int] = mapped_column(Integer, default=0)
    queue_outcome: Mapped[str | None] = mapped_column(String(16))  # agent|fallback|abandoned
    queue_wait_s: Mapped[float | None] = mapped_column(Float)
    agent_handle_s: Mapped[float | None] = mapped_column(Float)


class HourRollup(Base):
    """The figures of the calls started in one hour (UTC), kept by the analytics worker
    (``analytics/rollups.py``): sums and counts, so that hours add up."""

    __tablename__ = "rollup_hours"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    rolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    """Rolled after the hour ended (until then, its calls are read from the calls)."""
    calls: Mapped[int] = mapped_column(Integer, default=0)
    analysed: Mapped[int] = mapped_column(Integer, default=0)
    with_fallback: Mapped[int] = mapped_column(Integer, default=0)
    duration_sum: Mapped[float] = mapped_column(Float, default=0.0)
    duration_n: Mapped[int] = mapped_column(Integer, default=0)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    queue_abandoned: Mapped[int] = mapped_column(Integer, default=0)
    queue_wait_sum: Mapped[float] = mapped_column(Float, default=0.0)
    queue_wait_n: Mapped[int] = mapped_column(Integer, default=0)
    agent_handle_sum: Mapped[float] = mapped_column(Float, default=0.0)
    agent_handle_n: Mapped[int] = mapped_column(Integer, default=0)
    sentiment_sum: Mapped[float] = mapped_column(Float, default=0.0)
    sentiment_n: Mapped[int] = mapped_column(Integer, default=0)


class HourCount(Base):
    """Counts of one hour's calls by ``kind``: ``outcome`` (analysed calls), ``intent``
    (caller turns) and ``response_ms`` (bot turns, by 10 ms bucket)."""

    __tablename__ = "rollup_counts"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
