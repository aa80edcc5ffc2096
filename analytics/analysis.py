"""Post-call analysis of one call: pure functions over a stored call, its turns and events.

``analyze(call)`` takes a :class:`~switchboard.storage.models.Call` with its turns and
events loaded and returns a :class:`CallAnalysisResult`; nothing here touches the database
or the network, so every figure can be checked on a call built in memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from switchboard.storage.models import Call, Turn

# --- outcomes ----------------------------------------------------------------------------
RESOLVED = "resolved"  # the bot finished the conversation itself (goodbye)
HANDED_OFF = "handed_off"  # transferred to a human agent
ABANDONED = "abandoned"  # the caller hung up, or went silent until the bot gave up
FAILED = "failed"  # something broke: dialog, media, a worker, the node
IN_PROGRESS = "in_progress"  # not ended yet
UNKNOWN = "unknown"  # an end reason this table does not know

OUTCOME_BY_END_REASON: dict[str, str] = {
    "bot_hangup": RESOLVED,
    "handoff": HANDED_OFF,
    "caller_hangup": ABANDONED,
    "rtp_timeout": ABANDONED,
    "max_duration": ABANDONED,
    "dialog_unavailable": FAILED,
    "turn_error": FAILED,
    "media_error": FAILED,
    "internal_error": FAILED,
    "cancelled": FAILED,
    "worker_died": FAILED,
    "node_restarted": FAILED,
    "setup_failed": FAILED,
    "agent_hangup": HANDED_OFF,
    "transferred": HANDED_OFF,
}
"""How ``Call.end_reason`` maps to an outcome. Reasons with a detail after a colon
(``setup_failed: …``) are looked up by the part before it. A ``bot_hangup`` that follows
the final no-input reprompt is ``abandoned``: the caller went silent, the bot did not
resolve anything. Unknown reasons are ``failed`` when the call's status is ``failed``,
``unknown`` otherwise."""

FALLBACK_INTENTS = frozenset({"nlu_fallback"})
"""Intents that mean the bot did not understand the caller (Rasa's fallback)."""

KEYPAD_PREFIX = "[keypad]"
"""Caller turns typed on the keypad start with this; they are not speech."""

SENTIMENT_POSITIVE = 0.05
SENTIMENT_NEGATIVE = -0.05
"""VADER's own thresholds on the compound score for positive and negative."""

LATENCY_FIELDS = ("response_ms", "endpoint_ms", "stt_ms", "dialog_ms", "tts_ms")

SUMMARY_MAX_CHARS = 160


def outcome_of(call: Call) -> str:
    """The outcome of ``call`` (see :data:`OUTCOME_BY_END_REASON`)."""
    if call.ended_at is None and call.status == "active":
        return IN_PROGRESS
    reason = (call.end_reason or "").split(":", 1)[0].strip()
    outcome = OUTCOME_BY_END_REASON.get(reason)
    if outcome is None:
        return FAILED if call.status == "failed" else UNKNOWN
    if outcome == ABANDONED and any(e.kind == "agent_joined" for e in call.events):
        return HANDED_OFF  # the caller hung up on the agent: the agent had the call
    if outcome == RESOLVED and any(
        e.kind == "no_input" and (e.data or {}).get("final") for e in call.events
    ):
        return ABANDONED
    return outcome


# --- the agents' desk --------------------------------------------------------------------

AGENT_GONE = frozenset({"agent_left"})


@dataclass(frozen=True)
class DeskFigures:
    """How the call went at the agents' desk: how its (last) wait in the queue ended
    (``agent``, ``fallback``, ``abandoned``; None if it never waited), the time waited,
    and the time agents had it."""

    queue_outcome: str | None
    queue_wait_s: float | None
    agent_handle_s: float | None


def desk_figures(call: Call) -> DeskFigures:
    events = sorted(call.events, key=lambda e: (e.at, e.id or 0))
    left = [e.data or {} for e in events if e.kind == "queue_left"]
    outcome = str(left[-1].get("outcome")) if left else None
    waited = (round(sum(float(d.get("waited_ms") or 0) for d in left) / 1000, 1)
              if left else None)
    handled, joined_at = 0.0, None
    for event in events:
        if event.kind == "agent_joined" and joined_at is None:
            joined_at = event.at
        elif event.kind in AGENT_GONE and joined_at is not None:
            handled += _seconds(joined_at, event.at)
            joined_at = None
    if joined_at is not None and call.ended_at is not None:
        handled += _seconds(joined_at, call.ended_at)
    agent = any(e.kind == "agent_joined" for e in events)
    return DeskFigures(outcome, waited, round(handled, 1) if agent else None)


# --- timing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TalkTime:
    duration_s: float | None
    caller_s: float
    bot_s: float
    silence_s: float | None  # nobody talking (overlaps counted once)


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def _union_s(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    total = 0.0
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += _seconds(*current)
            current = (start, end)
        elif end > current[1]:
            current = (current[0], end)
    if current is not None:
        total += _seconds(*current)
    return total


def _spoken(turns: Sequence[Turn], speaker: str) -> list[tuple[datetime, datetime]]:
    return [
        (t.started_at, t.ended_at)
        for t in turns
        if t.speaker == speaker and t.ended_at is not None and t.ended_at > t.started_at
        and not t.text.startswith(KEYPAD_PREFIX)
    ]


def talk_time(call: Call) -> TalkTime:
    """Call duration, time each side spoke, and silence (duration minus any speech).

    Turns without an end time count as zero length; keypad entries are not speech."""
    caller = _spoken(call.turns, "caller")
    bot = _spoken(call.turns, "bot")
    end = call.ended_at
    if end is None and call.turns:
        end = max((t.ended_at or t.started_at) for t in call.turns)
    duration = _seconds(call.started_at, end) if end is not None else None
    silence = None
    if duration is not None:
        silence = round(max(0.0, duration - _union_s(caller + bot)), 3)
    return TalkTime(
        duration_s=round(duration, 3) if duration is not None else None,
        caller_s=round(_union_s(caller), 3),
        bot_s=round(_union_s(bot), 3),
        silence_s=silence,
    )


def barge_ins(call: Call) -> int:
    """Times the caller cut the bot off: barge-in events, or flagged turns if none were
    logged (older calls)."""
    events = sum(1 for e in call.events if e.kind == "barge_in")
    return events or sum(1 for t in call.turns if t.speaker == "caller" and t.barge_in)


def intent_sequence(turns: Sequence[Turn]) -> list[str]:
    """The caller's intents in order; turns without a recognised intent are skipped."""
    return [t.intent for t in turns if t.speaker == "caller" and t.intent]


def fallback_count(call: Call) -> int:
    """Caller turns the bot did not understand: fallback intents plus unintelligible audio."""
    fallbacks = sum(
        1 for t in call.turns if t.speaker == "caller" and t.intent in FALLBACK_INTENTS
    )
    return fallbacks + sum(1 for e in call.events if e.kind == "unintelligible")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile with linear interpolation (as PostgreSQL's percentile_cont)."""
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 1)


def latency_stats(turns: Sequence[Turn]) -> dict[str, dict[str, float | int | None]]:
    """Per stage: count, p50, p95, mean and max of the call's turn latencies (ms)."""
    stats: dict[str, dict[str, float | int | None]] = {}
    for name in LATENCY_FIELDS:
        values = [v for v in (getattr(t, name) for t in turns) if v is not None]
        if not values:
            continue
        stats[name] = {
            "count": len(values),
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "mean": round(float(np.mean(values)), 1),
            "max": round(float(max(values)), 1),
        }
    return stats


# --- sentiment ---------------------------------------------------------------------------


@cache
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # reads the lexicon shipped in the wheel


def sentiment_score(text: str) -> float:
    """VADER's compound score of ``text``: -1 (most negative) to 1 (most positive)."""
    return float(_vader().polarity_scores(text)["compound"])


def sentiment_label(score: float | None) -> str | None:
    if score is None:
        return None
    if score >= SENTIMENT_POSITIVE:
        return "positive"
    if score <= SENTIMENT_NEGATIVE:
        return "negative"
    return "neutral"


# --- redaction ---------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,14}"
    r"(?![ .-]?\d)(?!\w)"
)


def luhn_valid(digits: str) -> bool:
    """Whether the digit string passes the Luhn check that payment card numbers carry."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def redact(text: str) -> tuple[str, int]:
    """``text`` with card numbers (13–19 digits passing Luhn), e-mail addresses and phone
    numbers (7–15 digits, optionally +country and separators) replaced by ``[card]``,
    ``[email]`` and ``[phone]``; returns the text and how many were replaced.

    Shorter numbers (the demo's 5-digit order numbers, amounts) are kept."""
    count = 0

    def card(match: re.Match[str]) -> str:
        nonlocal count
        digits = re.sub(r"\D", "", match.group())
        if not luhn_valid(digits):
            return match.group()
        count += 1
        return "[card]"

    def replace_with(label: str) -> Any:
        def _sub(_match: re.Match[str]) -> str:
            nonlocal count
            count += 1
            return label

        return _sub

    text = _CARD.sub(card, text)
    text = _EMAIL.sub(replace_with("[email]"), text)
    text = _PHONE.sub(replace_with("[phone]"), text)
    return text, count


# --- summary -----------------------------------------------------------------------------

OUTCOME_PHRASES = {
    RESOLVED: "resolved by the bot",
    HANDED_OFF: "handed off to an agent",
    ABANDONED: "abandoned by the caller",
    FAILED: "failed",
    IN_PROGRESS: "still in progress",
    UNKNOWN: "ended",
}


def _clip(text: str) -> str:
    if len(text) <= SUMMARY_MAX_CHARS:
        return text
    return text[: SUMMARY_MAX_CHARS - 1].rsplit(" ", 1)[0] + "…"


def summarize(transcript: Sequence[dict[str, Any]], intents: Sequence[str], outcome: str,
              reason: str | None) -> str:
    """An extractive summary: the caller's first request and last words (redacted, as
    said), the intents recognised and the outcome."""
    said = [t["text"] for t in transcript
            if t["speaker"] == "caller" and t["text"] and not t["text"].startswith(KEYPAD_PREFIX)]
    parts = []
    if said:
        parts.append(f'Caller asked: "{_clip(said[0])}"')
        if len(said) > 1:
            parts.append(f'last said: "{_clip(said[-1])}"')
    else:
        parts.append("The caller said nothing the bot understood")
    if intents:
        parts.append("intents: " + " → ".join(dict.fromkeys(intents)))
    tail = f" ({reason})" if reason else ""
    return "; ".join(parts) + f". Outcome: {OUTCOME_PHRASES[outcome]}{tail}."


# --- the whole analysis ------------------------------------------------------------------


@dataclass
class CallAnalysisResult:
    """Everything stored for one call in ``call_analyses``."""

    call_id: str
    outcome: str
    duration_s: float | None
    caller_talk_s: float
    bot_talk_s: float
    silence_s: float | None
    turns: int
    caller_turns: int
    bot_turns: int
    barge_ins: int
    fallbacks: int
    intents: list[str]
    sentiment: float | None
    sentiment_label: str | None
    summary: str
    transcript: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    redactions: int = 0
    queue_outcome: str | None = None
    queue_wait_s: float | None = None
    agent_handle_s: float | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def transcript_of(turns: Sequence[Turn]) -> tuple[list[dict[str, Any]], int]:
    """The redacted transcript (with caller sentiment per utterance) and the redaction count."""
    entries: list[dict[str, Any]] = []
    redactions = 0
    for turn in turns:
        text, n = redact(turn.text)
        redactions += n
        entry: dict[str, Any] = {
            "seq": turn.seq,
            "speaker": turn.speaker,
            "text": text,
            "at": turn.started_at.isoformat(),
            "intent": turn.intent,
            "barge_in": turn.barge_in,
        }
        if turn.speaker == "caller" and turn.text and not turn.text.startswith(KEYPAD_PREFIX):
            entry["sentiment"] = round(sentiment_score(text), 4)
        entries.append(entry)
    return entries, redactions


def analyze(call: Call) -> CallAnalysisResult:
    """The analysis of ``call`` (its ``turns`` and ``events`` must be loaded)."""
    turns = list(call.turns)
    timing = talk_time(call)
    transcript, redactions = transcript_of(turns)
    scores = [t["sentiment"] for t in transcript if "sentiment" in t]
    overall = round(float(np.mean(scores)), 4) if scores else None
    intents = intent_sequence(turns)
    outcome = outcome_of(call)
    desk = desk_figures(call)
    return CallAnalysisResult(
        call_id=call.id,
        outcome=outcome,
        duration_s=timing.duration_s,
        caller_talk_s=timing.caller_s,
        bot_talk_s=timing.bot_s,
        silence_s=timing.silence_s,
        turns=len(turns),
        caller_turns=sum(1 for t in turns if t.speaker == "caller"),
        bot_turns=sum(1 for t in turns if t.speaker == "bot"),
        barge_ins=barge_ins(call),
        fallbacks=fallback_count(call),
        intents=intents,
        sentiment=overall,
        sentiment_label=sentiment_label(overall),
        summary=summarize(transcript, intents, outcome, call.end_reason),
        transcript=transcript,
        latency=latency_stats(turns),
        redactions=redactions,
        queue_outcome=desk.queue_outcome,
        queue_wait_s=desk.queue_wait_s,
        agent_handle_s=desk.agent_handle_s,
    )
