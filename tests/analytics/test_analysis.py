"""Analysis of one call: outcome, timing, intents, sentiment, latency, redaction, summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from analytics.analysis import (
    ABANDONED,
    FAILED,
    HANDED_OFF,
    IN_PROGRESS,
    RESOLVED,
    UNKNOWN,
    analyze,
    luhn_valid,
    outcome_of,
    redact,
    sentiment_label,
    sentiment_score,
)
from switchboard.storage.database import prepare_database
from switchboard.storage.models import Call, CallEvent, Turn
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.analytics.calls import desk_call, order_call, store_call

T0 = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)


def _call(reason: str | None, status: str = "ended", events: list[str] | None = None) -> Call:
    call = Call(id="c1", transport="sip", status=status, started_at=T0, end_reason=reason,
                ended_at=T0 + timedelta(seconds=10) if status != "active" else None)
    call.events = [CallEvent(kind=kind, data={"final": True}) for kind in events or []]
    return call


@pytest.mark.parametrize(("reason", "status", "outcome"), [
    ("bot_hangup", "ended", RESOLVED),
    ("handoff", "ended", HANDED_OFF),
    ("caller_hangup", "ended", ABANDONED),
    ("max_duration", "ended", ABANDONED),
    ("dialog_unavailable", "failed", FAILED),
    ("turn_error", "failed", FAILED),
    ("worker_died", "ended", FAILED),
    ("node_restarted", "ended", FAILED),
    ("setup_failed: no media port", "failed", FAILED),
    ("something_new", "failed", FAILED),
    ("something_new", "ended", UNKNOWN),
])
def test_end_reasons_map_to_outcomes(reason: str, status: str, outcome: str) -> None:
    assert outcome_of(_call(reason, status)) == outcome


def test_calls_at_the_agents_desk_have_queue_and_handle_figures(tmp_path: Path) -> None:
    sessions = prepare_database(f"sqlite:///{tmp_path / 'desk.db'}")
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    taken = CallRepository(sessions).get_call(store_call(sessions, desk_call(start, taken=True)))
    left = CallRepository(sessions).get_call(store_call(sessions, desk_call(start, taken=False)))
    assert taken is not None and left is not None
    took = analyze(taken)
    assert (took.outcome, took.queue_outcome, took.queue_wait_s, took.agent_handle_s) == (
        HANDED_OFF, "agent", 20.0, 40.0)  # joined at 28 s, the call ended at 68 s
    gave_up = analyze(left)
    assert (gave_up.outcome, gave_up.queue_outcome, gave_up.queue_wait_s,
            gave_up.agent_handle_s) == (ABANDONED, "abandoned", 20.0, None)
    plain = CallRepository(sessions).get_call(store_call(sessions, order_call(start)))
    assert plain is not None
    assert (analyze(plain).queue_outcome, analyze(plain).agent_handle_s) == (None, None)
    # a caller who hangs up on the agent: the call was still handed off
    hung_up = CallRepository(sessions).get_call(store_call(
        sessions, desk_call(start, taken=True, reason="caller_hangup")))
    assert hung_up is not None and outcome_of(hung_up) == HANDED_OFF


def test_bot_hanging_up_on_a_silent_caller_is_abandoned_not_resolved() -> None:
    assert outcome_of(_call("bot_hangup", events=["no_input"])) == ABANDONED


def test_an_active_call_is_in_progress() -> None:
    assert outcome_of(_call(None, status="active")) == IN_PROGRESS


def test_a_stored_call_is_analysed_with_timing_intents_latency_and_sentiment(
        tmp_path: Path) -> None:
    sessions = prepare_database(f"sqlite:///{tmp_path}/calls.db", demo_data=False)
    call_id = store_call(sessions, order_call(T0))
    call = CallRepository(sessions).get_call(call_id)
    assert call is not None

    result = analyze(call)

    assert result.outcome == RESOLVED
    assert result.duration_s == 30.0
    assert result.bot_talk_s == 10.0 and result.caller_talk_s == 5.0
    assert result.silence_s == 16.0  # 30 s minus 14 s of speech (the barge-in overlap once)
    assert (result.turns, result.caller_turns, result.bot_turns) == (7, 3, 4)
    assert result.barge_ins == 1 and result.fallbacks == 0
    assert result.intents == ["check_order", "inform_order_number", "thank"]
    assert result.latency["response_ms"] == {
        "count": 3, "p50": 700.0, "p95": 880.0, "mean": 700.0, "max": 900.0}
    assert result.latency["stt_ms"]["p50"] == 200.0
    caller = [t for t in result.transcript if t["speaker"] == "caller"]
    assert caller[-1]["sentiment"] > 0.5  # "Great, thanks a lot!"
    assert result.sentiment is not None and result.sentiment_label == "positive"
    assert result.summary.startswith('Caller asked: "Hi, I want to check on my order."')
    assert "check_order → inform_order_number → thank" in result.summary
    assert result.summary.endswith("Outcome: resolved by the bot (bot_hangup).")


def test_turns_without_intents_and_calls_without_speech_are_handled() -> None:
    call = _call("caller_hangup")
    call.turns = [
        Turn(seq=1, speaker="bot", text="Hello?", barge_in=False, started_at=T0,
             ended_at=T0 + timedelta(seconds=1)),
        Turn(seq=2, speaker="caller", text="[keypad] 1", barge_in=False,
             started_at=T0 + timedelta(seconds=2), ended_at=T0 + timedelta(seconds=2)),
    ]
    result = analyze(call)
    assert result.intents == [] and result.sentiment is None and result.sentiment_label is None
    assert result.caller_talk_s == 0.0 and result.silence_s == 9.0
    assert result.summary.startswith("The caller said nothing the bot understood")
    assert result.latency == {}


def test_fallbacks_count_fallback_intents_and_unintelligible_audio() -> None:
    call = _call("handoff")
    call.events = [CallEvent(kind="unintelligible", data={})]
    call.turns = [Turn(seq=1, speaker="caller", text="blorp", intent="nlu_fallback",
                       started_at=T0, barge_in=False)]
    assert analyze(call).fallbacks == 2


def test_vader_scores_caller_sentiment_from_the_lexicon_in_the_wheel() -> None:
    lexicon = resources.files("vaderSentiment") / "vader_lexicon.txt"
    assert lexicon.is_file()
    assert sentiment_score("This is ridiculous, I'm really angry with your service") < -0.5
    assert sentiment_score("Thank you so much, that was really helpful") > 0.5
    assert sentiment_label(sentiment_score("It arrived on Tuesday.")) == "neutral"


@pytest.mark.parametrize(("text", "expected", "count"), [
    ("my card is 4111 1111 1111 1111 thanks", "my card is [card] thanks", 1),
    ("card 4111-1111-1111-1111", "card [card]", 1),
    ("5500005555555559", "[card]", 1),
    ("4111 1111 1111 1112 fails Luhn", "4111 1111 1111 1112 fails Luhn", 0),
    ("write to jane.doe+billing@example.co.uk please", "write to [email] please", 1),
    ("call me on +1 (555) 010-0199 or 555-0100.", "call me on [phone] or [phone].", 2),
    ("+44 20 7946 0958", "[phone]", 1),
    ("order 48213 costs 25 dollars", "order 48213 costs 25 dollars", 0),
])
def test_personal_data_is_redacted(text: str, expected: str, count: int) -> None:
    assert redact(text) == (expected, count)


def test_luhn_check() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_the_stored_transcript_and_summary_are_redacted(tmp_path: Path) -> None:
    sessions = prepare_database(f"sqlite:///{tmp_path}/calls.db", demo_data=False)
    call_id = store_call(sessions, order_call(
        T0, reason="handoff", caller_opening="Charge 4111 1111 1111 1111, mail me at a@b.io"))
    call = CallRepository(sessions).get_call(call_id)
    assert call is not None
    result = analyze(call)
    assert result.redactions == 2 and result.outcome == HANDED_OFF
    assert result.transcript[1]["text"] == "Charge [card], mail me at [email]"
    assert "4111" not in result.summary and "a@b.io" not in result.summary


def test_storing_an_analysis_twice_keeps_one_row(url: str) -> None:
    sessions = prepare_database(url, demo_data=False)
    call_id = store_call(sessions, order_call(T0))
    call = CallRepository(sessions).get_call(call_id)
    assert call is not None
    analyses = AnalysisRepository(sessions)
    assert analyses.save(analyze(call).as_row()) == 1
    assert analyses.save(analyze(call).as_row()) == 2
    assert analyses.count(call_id) == 1
    stored = analyses.get(call_id)
    assert stored is not None and stored.runs == 2 and stored.outcome == RESOLVED
    assert stored.intents == ["check_order", "inform_order_number", "thank"]
    assert stored.latency["response_ms"]["p95"] == 880.0


def test_only_calls_ended_long_ago_without_analysis_are_pending(url: str) -> None:
    sessions = prepare_database(url, demo_data=False)
    old = store_call(sessions, order_call(T0))
    analysed = store_call(sessions, order_call(T0))
    recent = store_call(sessions, order_call(datetime.now(UTC) - timedelta(seconds=40)))
    CallRepository(sessions).create_call(transport="sip")  # active
    analyses = AnalysisRepository(sessions)
    call = CallRepository(sessions).get_call(analysed)
    assert call is not None
    analyses.save(analyze(call).as_row())
    pending = analyses.unanalyzed_call_ids(ended_before=datetime.now(UTC) - timedelta(minutes=5))
    assert pending == [old]
    assert recent not in pending
