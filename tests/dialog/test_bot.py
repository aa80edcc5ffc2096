"""Conversations with the real bot over Rasa's REST channel, as the pipeline holds them.

Caller turns go through ``normalize_caller_text`` first, exactly like the app does.
Demo orders (seeded by the ``database_url`` fixture): 48213 shipped with UPS,
51007 processing, 30562 delivered, 77801 cancelled.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dialog.runtime import RasaServers
from dialog.text_normalizer import normalize_caller_text
from tests.support.dialog_fixtures import say

CALL_METADATA = {"call_id": "test-call", "caller": "+15550100", "transport": "sip"}
HANDOFF = {"handoff": {"queue": "support", "reason": "caller_request"}}
HANGUP = {"hangup": True}


class Call:
    """One phone call: a fresh Rasa conversation answered with /call_start."""

    def __init__(self, rasa_server: RasaServers) -> None:
        self.url = rasa_server.url
        self.sender = f"test-{uuid.uuid4()}"
        self.greeting = self.turn("/call_start")

    def turn(self, caller_text: str) -> list[dict[str, Any]]:
        return say(self.url, self.sender, normalize_caller_text(caller_text), CALL_METADATA)

    def texts(self, caller_text: str) -> str:
        """The bot's spoken reply, all messages joined."""
        return " ".join(m["text"] for m in self.turn(caller_text) if m.get("text"))


def customs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["custom"] for m in messages if m.get("custom")]


def texts(messages: list[dict[str, Any]]) -> str:
    return " ".join(m["text"] for m in messages if m.get("text"))


@pytest.fixture
def call(rasa_server: RasaServers) -> Call:
    return Call(rasa_server)


def test_call_start_greets_the_caller(call: Call) -> None:
    assert texts(call.greeting) == "Hi, you've reached Acme support. How can I help you today?"
    assert customs(call.greeting) == []


@pytest.mark.parametrize(
    "spoken_number",
    ["four eight two one three", "48213", "my order number is 48213", "4, 8, 2, 1, 3."],
)
def test_order_status_by_voice(call: Call, spoken_number: str) -> None:
    assert call.texts("Hi, I'd like to check my order status") == "Sure. What's your order number?"
    reply = call.texts(spoken_number)
    assert reply.startswith("Order 4 8 2 1 3 has shipped with UPS. It should arrive ")
    assert reply.endswith("Is there anything else I can help you with?")


def test_keypad_entry_inside_the_order_form(call: Call) -> None:
    call.turn("where's my package")
    reply = call.texts('/inform{"order_number":"51007"}')
    assert reply.startswith("Order 5 1 0 0 7 is being processed and hasn't shipped yet.")


def test_keypad_entry_without_asking_first_looks_the_order_up(call: Call) -> None:
    reply = call.texts('/inform{"order_number":"30562"}')
    assert reply.startswith("Order 3 0 5 6 2 was delivered")


def test_order_number_in_the_first_sentence_skips_the_question(call: Call) -> None:
    assert call.texts("has order 48213 shipped").startswith("Order 4 8 2 1 3 has shipped")


def test_unknown_order_is_reported_and_asked_again(call: Call) -> None:
    call.turn("track my order")
    reply = call.texts("nine nine nine nine nine")
    assert reply.startswith("Sorry, I couldn't find an order with the number 9 9 9 9 9.")
    assert "five digit order number" in reply
    assert call.texts("four eight two one three").startswith("Order 4 8 2 1 3 has shipped")


def test_too_short_number_is_asked_again(call: Call) -> None:
    call.turn("check my order")
    assert call.texts("four eight two").startswith("Order numbers have five digits")


def test_cancelled_order_offers_an_agent_and_yes_hands_off(call: Call) -> None:
    call.turn("check my order")
    reply = call.texts("seven seven eight oh one")
    assert reply == (
        "Order 7 7 8 0 1 was cancelled. Would you like me to connect you with an agent?"
    )
    assert customs(call.turn("yes please")) == [HANDOFF]


@pytest.mark.parametrize(
    "request_text",
    ["I want to talk to a person", "agent please", "representative", "can I speak to someone"],
)
def test_asking_for_a_human_hands_off(call: Call, request_text: str) -> None:
    messages = call.turn(request_text)
    assert texts(messages) == "Sure, I'll connect you with an agent now. Please hold."
    assert customs(messages) == [HANDOFF]


def test_asking_for_a_human_while_asked_for_the_order_number_hands_off(call: Call) -> None:
    call.turn("where is my order")
    assert customs(call.turn("just get me a human")) == [HANDOFF]


def test_billing_answer_offers_an_agent(call: Call) -> None:
    assert call.texts("I was charged twice").endswith(
        "Would you like me to connect you with an agent?"
    )
    assert "anything else" in call.texts("no thanks")


def test_password_answer_then_agent_on_yes(call: Call) -> None:
    assert "forgot password" in call.texts("I forgot my password")
    assert customs(call.turn("yes")) == [HANDOFF]


def test_goodbye_speaks_and_hangs_up(call: Call) -> None:
    messages = call.turn("ok thanks bye")
    assert texts(messages) == "Thanks for calling Acme. Goodbye."
    assert customs(messages) == [HANGUP]


def test_nothing_else_ends_the_call(call: Call) -> None:
    call.turn('/inform{"order_number":"48213"}')
    assert customs(call.turn("no")) == [HANGUP]


def test_repeat_says_the_last_turn_again(call: Call) -> None:
    first = call.texts("where is order 48213")
    assert call.texts("sorry can you repeat that") == first
    assert customs(call.turn("no")) == [HANGUP], "the follow-up question still works"


def test_repeat_while_asked_for_the_order_number_keeps_the_form(call: Call) -> None:
    call.turn("check my order")
    assert "order number" in call.texts("what did you say")
    assert call.texts("48213").startswith("Order 4 8 2 1 3")


def test_repeat_before_the_bot_said_anything(rasa_server: RasaServers) -> None:
    messages = say(rasa_server.url, f"test-{uuid.uuid4()}", "say that again")
    assert texts(messages) == "I haven't said anything yet. How can I help you today?"


def test_gibberish_gets_the_fallback(call: Call) -> None:
    assert call.texts("blorf zizzle quantum banana").startswith("Sorry, I didn't catch that.")


def test_out_of_scope_says_what_the_bot_can_do(call: Call) -> None:
    assert "orders, accounts and billing" in call.texts("what's the weather like")


def test_silence_reprompts_then_hangs_up(call: Call) -> None:
    assert call.texts("/no_input").startswith("Are you still there?")
    final = call.turn("/no_input_final")
    assert texts(final).endswith("Goodbye.")
    assert customs(final) == [HANGUP]


def test_silence_while_asked_for_the_order_number_asks_again(call: Call) -> None:
    call.turn("check my order")
    reply = call.texts("/no_input")
    assert reply.startswith("Are you still there?")
    assert "order number" in reply
    assert customs(call.turn("/no_input_final")) == [HANGUP]
