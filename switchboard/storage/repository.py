"""The repository layer: every read and write of calls, turns, events and orders."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from switchboard.storage.models import (
    AuditEvent,
    Call,
    CallAnalysis,
    CallEvent,
    Order,
    Turn,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)


class StoredTurn(Protocol):
    """What a turn gives the repository to store (the conversation core's ``TurnRecord``)."""

    @property
    def speaker(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def ended_at(self) -> datetime | None: ...
    @property
    def intent(self) -> str | None: ...
    @property
    def confidence(self) -> float | None: ...
    @property
    def barge_in(self) -> bool: ...
    @property
    def endpoint_ms(self) -> float | None: ...
    @property
    def stt_ms(self) -> float | None: ...
    @property
    def dialog_ms(self) -> float | None: ...
    @property
    def tts_ms(self) -> float | None: ...
    @property
    def response_ms(self) -> float | None: ...


EVENTS_WITH_WORDS = ("dtmf", "keypad_with_agent", "empty_reply")
"""Call events whose data holds what the caller said or keyed (retention blanks it)."""


class CallIdTaken(ValueError):
    """A new call was given the id of an earlier one."""


class CallRepository:
    """Calls with their turns and events. Each method is one short transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create_call(
        self,
        *,
        transport: str,
        caller: str | None = None,
        callee: str | None = None,
        metadata: dict[str, Any] | None = None,
        call_id: str | None = None,
        worker: str | None = None,
        node: str | None = None,
        started_at: datetime | None = None,
    ) -> str:
        """Store a new call; its id (``call_id`` when given: :class:`CallIdTaken` if an
        earlier call has it). ``started_at``: now unless given (a call written late)."""
        with self._sessions() as session:
            call = Call(transport=transport, caller=caller, callee=callee,
                        call_metadata=metadata or {}, worker=worker, node=node,
                        started_at=started_at or utcnow())
            if call_id:
                call.id = call_id
            session.add(call)
            try:
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                if call_id and session.get(Call, call_id) is not None:
                    raise CallIdTaken(call_id) from exc
                raise
            return call.id

    def add_turn(self, call_id: str, turn: StoredTurn) -> int:
        """Store a turn with the next sequence number; returns that number."""
        with self._sessions() as session:
            seq = session.scalar(
                select(func.coalesce(func.max(Turn.seq), 0)).where(Turn.call_id == call_id)
            )
            row = Turn(
                call_id=call_id, seq=(seq or 0) + 1, speaker=turn.speaker, text=turn.text,
                started_at=turn.started_at, ended_at=turn.ended_at, intent=turn.intent,
                confidence=turn.confidence, barge_in=turn.barge_in,
                endpoint_ms=turn.endpoint_ms, stt_ms=turn.stt_ms, dialog_ms=turn.dialog_ms,
                tts_ms=turn.tts_ms, response_ms=turn.response_ms,
            )
            session.add(row)
            session.commit()
            return row.seq

    def add_event(self, call_id: str, kind: str, data: dict[str, Any] | None = None,
                  *, at: datetime | None = None) -> None:
        with self._sessions() as session:
            session.add(CallEvent(call_id=call_id, kind=kind, data=data or {},
                                  at=at or utcnow()))
            session.commit()

    def end_call(
        self,
        call_id: str,
        *,
        reason: str,
        status: str = "ended",
        handoff_target: str | None = None,
        recording_path: str | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        with self._sessions() as session:
            call = session.get(Call, call_id)
            if call is None:
                raise KeyError(f"no call with id {call_id}")
            call.ended_at = ended_at or utcnow()
            call.end_reason = reason
            call.status = status
            if handoff_target:
                call.handoff_target = handoff_target
            if recording_path:
                call.recording_path = recording_path
            session.commit()

    def _update(self, call_id: str, **fields: Any) -> None:
        with self._sessions() as session:
            call = session.get(Call, call_id)
            if call is None:
                raise KeyError(f"no call with id {call_id}")
            for name, value in fields.items():
                setattr(call, name, value)
            session.commit()

    def set_recording(self, call_id: str, path: str) -> None:
        """Attach a recording file to the call."""
        self._update(call_id, recording_path=path)

    def set_agent(self, call_id: str, agent: str) -> None:
        """The agent who took the call (before any wrap-up)."""
        self._update(call_id, agent=agent)

    def wrap_up(self, call_id: str, *, agent: str, disposition: str, notes: str) -> None:
        """The agent's wrap-up of a call they took: disposition and notes."""
        self._update(call_id, agent=agent, disposition=disposition, agent_notes=notes)

    def recordings_started_before(self, cutoff: datetime, *, node: str, limit: int,
                                  skip: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """(call id, recording path) of ended calls of ``node`` (or of no node: stored
        before calls had one) started before ``cutoff`` that still have a recording,
        oldest first (``skip``: ids to leave out). Recordings are on their node's disk."""
        with self._sessions() as session:
            query = (select(Call.id, Call.recording_path)
                     .where(Call.started_at < cutoff, Call.ended_at.is_not(None),
                            Call.recording_path.is_not(None),
                            or_(Call.node == node, Call.node.is_(None)))
                     .order_by(Call.started_at).limit(limit))
            if skip:
                query = query.where(Call.id.not_in(skip))
            return [(call_id, path) for call_id, path in session.execute(query) if path]

    def forget_recording(self, call_id: str) -> None:
        """The call's recording file was deleted (retention policy)."""
        self._update(call_id, recording_path=None, recording_deleted_at=utcnow())

    def delete_transcripts(self, cutoff: datetime, *, limit: int) -> int:
        """Blank the words of up to ``limit`` ended calls started before ``cutoff`` (oldest
        first): their turns' text, the keys pressed and words kept in their events
        (:data:`EVENTS_WITH_WORDS`), the agent's notes, their analysis' transcript and
        summary. Timings, intents, event kinds and outcomes stay, so the figures do not
        change. Returns how many calls."""
        with self._sessions.begin() as session:
            ids = list(session.scalars(
                select(Call.id).where(Call.started_at < cutoff, Call.ended_at.is_not(None),
                                      Call.transcript_deleted_at.is_(None))
                .order_by(Call.started_at).limit(limit)))
            if not ids:
                return 0
            session.execute(update(Turn).where(Turn.call_id.in_(ids)).values(text=""))
            session.execute(update(CallEvent).where(CallEvent.call_id.in_(ids),
                                                    CallEvent.kind.in_(EVENTS_WITH_WORDS))
                            .values(data={}))
            session.execute(update(Call).where(Call.id.in_(ids), Call.agent_notes.is_not(None))
                            .values(agent_notes=""))
            session.execute(update(CallAnalysis).where(CallAnalysis.call_id.in_(ids))
                            .values(transcript=[], summary=""))
            session.execute(update(Call).where(Call.id.in_(ids))
                            .values(transcript_deleted_at=utcnow()))
        return len(ids)

    def get_call(self, call_id: str) -> Call | None:
        """The call with its turns and events loaded (detached, safe to read anywhere)."""
        with self._sessions() as session:
            return session.scalar(
                select(Call)
                .where(Call.id == call_id)
                .options(selectinload(Call.turns), selectinload(Call.events))
            )

    def list_calls(self, *, limit: int = 50, offset: int = 0) -> list[Call]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Call).order_by(Call.started_at.desc()).limit(limit).offset(offset)
                )
            )

    def end_active_calls(self, *, reason: str, worker: str | None = None,
                         node: str | None = None, call_ids: list[str] | None = None,
                         started_before: datetime | None = None) -> list[str]:
        """Mark the calls still active as ended after a crash: those of one node (and
        those stored before calls had nodes), of one of its workers, the ones named, or
        those started before ``started_before``. Returns their ids."""
        with self._sessions() as session:
            query = select(Call).where(Call.status == "active")
            if started_before is not None:
                query = query.where(Call.started_at < started_before)
            if node is not None:
                query = query.where(or_(Call.node == node, Call.node.is_(None)))
            if worker is not None:
                query = query.where(Call.worker == worker)
            if call_ids is not None:
                query = query.where(Call.id.in_(call_ids))
            calls = list(session.scalars(query))
            for call in calls:
                call.status = "ended"
                call.end_reason = reason
                call.ended_at = utcnow()
            session.commit()
            return [call.id for call in calls]


class OrderRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def get(self, number: str) -> Order | None:
        with self._sessions() as session:
            return session.get(Order, number)


class AnalysisRepository:
    """Post-call analyses: one row per call, written idempotently by the analytics worker."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def save(self, values: dict[str, Any]) -> int:
        """Insert or replace the analysis of ``values["call_id"]`` in one statement (safe when
        two workers store the same call at once); returns how many times it has been stored."""
        with self._sessions() as session:
            dialect = session.get_bind().dialect.name
            if dialect == "postgresql":
                insert: Any = postgresql.insert
            elif dialect == "sqlite":
                insert = sqlite.insert
            else:
                raise NotImplementedError(f"analyses need SQLite or PostgreSQL, not {dialect}")
            row = {**values, "analyzed_at": utcnow(), "runs": 1}
            stmt = insert(CallAnalysis).values(**row)
            updates = {k: stmt.excluded[k] for k in row if k not in ("call_id", "runs")}
            stmt = stmt.on_conflict_do_update(
                index_elements=[CallAnalysis.call_id],
                set_={**updates, "runs": CallAnalysis.runs + 1},
            ).returning(CallAnalysis.runs)
            runs: int = session.execute(stmt).scalar_one()
            session.commit()
            return runs

    def get(self, call_id: str) -> CallAnalysis | None:
        with self._sessions() as session:
            return session.scalar(select(CallAnalysis).where(CallAnalysis.call_id == call_id))

    def count(self, call_id: str) -> int:
        with self._sessions() as session:
            return session.scalar(
                select(func.count()).select_from(CallAnalysis)
                .where(CallAnalysis.call_id == call_id)
            ) or 0

    def unanalyzed_call_ids(self, *, ended_before: datetime, limit: int = 500) -> list[str]:
        """Ended calls without an analysis that ended before ``ended_before``, oldest first."""
        with self._sessions() as session:
            return list(session.scalars(
                select(Call.id)
                .outerjoin(CallAnalysis, CallAnalysis.call_id == Call.id)
                .where(CallAnalysis.id.is_(None), Call.status != "active",
                       Call.ended_at.is_not(None), Call.ended_at < ended_before)
                .order_by(Call.ended_at)
                .limit(limit)
            ))


@dataclass
class CallFilters:
    """What the console's calls list (and ``GET /api/calls``) may filter on. Times are UTC;
    ``caller`` and ``text`` match anywhere, case-insensitively; ``outcome`` may be
    ``pending`` for calls not analysed yet."""

    since: datetime | None = None
    until: datetime | None = None
    caller: str = ""
    intent: str = ""
    outcome: str = ""
    transport: str = ""
    text: str = ""


@dataclass
class CallRow:
    """One line of the calls list."""

    id: str
    transport: str
    caller: str | None
    callee: str | None
    status: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    outcome: str | None
    sentiment_label: str | None
    summary: str | None
    turns: int


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


COUNT_LIMIT = 1_000
"""Matching calls are counted up to this many: counting every match of a filter over a
million calls takes seconds; a list needs to say "more than 1,000", not how many more."""
DISTINCT_INTENTS = text("""
    WITH RECURSIVE found(intent) AS (
        SELECT min(intent) FROM turns WHERE intent IS NOT NULL
        UNION ALL
        SELECT (SELECT min(intent) FROM turns WHERE intent > found.intent)
        FROM found WHERE found.intent IS NOT NULL)
    SELECT intent FROM found WHERE intent IS NOT NULL""")


@dataclass(frozen=True)
class CallCursor:
    """Where a keyset-paged list of calls goes on: the calls older than this one."""

    started_at: datetime
    id: str

    def __str__(self) -> str:  # "Z", not "+00:00": a "+" not URL-encoded reads as " "
        return f"{as_utc(self.started_at).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}~{self.id}"

    @classmethod
    def parse(cls, text: str) -> CallCursor:
        """Raises ValueError for anything :meth:`__str__` did not make."""
        moment, _, call_id = text.partition("~")
        if not call_id or len(call_id) > 64:
            raise ValueError(f"not a position in the calls list: {text[:40]!r}")
        return cls(as_utc(datetime.fromisoformat(moment)), call_id)


@dataclass(frozen=True)
class CallResults:
    rows: list[CallRow]
    total: int
    """Matching calls, up to ``COUNT_LIMIT``."""
    exact: bool
    """False when more than ``COUNT_LIMIT`` match."""
    older: CallCursor | None
    """Where the next (older) page starts; None on the last page."""


class CallSearch:
    """Filtered, paged reads of calls with their analysis, for the console and the API."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def _conditions(self, filters: CallFilters) -> list[Any]:
        conditions: list[Any] = []
        if filters.since is not None:
            conditions.append(Call.started_at >= filters.since)
        if filters.until is not None:
            conditions.append(Call.started_at < filters.until)
        if filters.caller:
            conditions.append(Call.caller.ilike(_like(filters.caller), escape="\\"))
        if filters.transport:
            conditions.append(Call.transport == filters.transport)
        if filters.intent:
            conditions.append(select(Turn.id).where(
                Turn.call_id == Call.id, Turn.intent == filters.intent).exists())
        if filters.outcome == "pending":
            conditions.append(CallAnalysis.id.is_(None))
        elif filters.outcome:
            conditions.append(CallAnalysis.outcome == filters.outcome)
        if filters.text:
            pattern = _like(filters.text)
            conditions.append(
                Call.id.ilike(pattern, escape="\\") | Call.caller.ilike(pattern, escape="\\")
                | Call.callee.ilike(pattern, escape="\\")
                | CallAnalysis.summary.ilike(pattern, escape="\\"))
        return conditions

    def search(self, filters: CallFilters, *, limit: int, offset: int = 0,
               before: CallCursor | None = None) -> CallResults:
        """One page of matching calls, newest first: the first ``limit`` after ``offset``
        or, keyset-paged, older than ``before`` (no matter how deep, it costs the same);
        and how many match, counted up to ``COUNT_LIMIT``."""
        conditions = self._conditions(filters)
        page_conditions = list(conditions)
        if before is not None:
            page_conditions += [Call.started_at <= before.started_at,
                                (Call.started_at < before.started_at) | (Call.id < before.id)]
        turns = (select(func.count(Turn.id)).where(Turn.call_id == Call.id)
                 .correlate(Call).scalar_subquery())
        base = select(Call, CallAnalysis.outcome, CallAnalysis.sentiment_label,
                      CallAnalysis.summary, turns.label("turns")).outerjoin(
            CallAnalysis, CallAnalysis.call_id == Call.id).where(*page_conditions)
        with self._sessions() as session:
            matching = (select(Call.id).outerjoin(CallAnalysis, CallAnalysis.call_id == Call.id)
                        .where(*conditions).limit(COUNT_LIMIT + 1).subquery())
            total = session.scalar(select(func.count()).select_from(matching)) or 0
            found = list(session.execute(
                base.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit + 1)
                .offset(0 if before is not None else offset)))
            rows = [
                CallRow(call.id, call.transport, call.caller, call.callee, call.status,
                        call.started_at, call.ended_at, call.end_reason, outcome, label,
                        summary, count or 0)
                for call, outcome, label, summary, count in found[:limit]
            ]
        older = (CallCursor(rows[-1].started_at, rows[-1].id)
                 if len(found) > limit and rows else None)
        return CallResults(rows, min(total, COUNT_LIMIT), total <= COUNT_LIMIT, older)

    def known_intents(self) -> list[str]:
        """Every intent stored on a caller turn, for the filter's choices."""
        with self._sessions() as session:  # a skip scan of the intent index: one index
            return sorted(i for i in session.scalars(DISTINCT_INTENTS) if i)  # probe each


AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]
    ip: str | None


class AuditRepository:
    """The audit log in the console's database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def record(self, actor: str, action: str, *, target: str | None = None,
               detail: dict[str, Any] | None = None, ip: str | None = None) -> None:
        """Add one entry; a database error is logged, not raised (the action is done)."""
        try:
            with self.sessions.begin() as session:
                session.add(AuditEvent(actor=actor[:64], action=action[:40],
                                       target=None if target is None else target[:128],
                                       detail=detail or {}, ip=ip))
        except SQLAlchemyError as exc:
            log.error("audit log: could not record %s by %s on %s: %s", action, actor,
                      target, exc)

    def entries(self, *, limit: int = AUDIT_PAGE_SIZE, before: int | None = None,
                actor: str = "", action: str = "") -> list[AuditEntry]:
        """Newest first; ``before`` an id pages back (keyset, not offset)."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        if actor:
            query = query.where(AuditEvent.actor == actor)
        if action:
            query = query.where(AuditEvent.action == action)
        with self.sessions() as session:
            return [AuditEntry(e.id, as_utc(e.at), e.actor, e.action, e.target,
                               dict(e.detail or {}), e.ip)
                    for e in session.scalars(query)]

    def actions(self) -> list[str]:
        with self.sessions() as session:
            return sorted(session.scalars(select(AuditEvent.action).distinct()))
