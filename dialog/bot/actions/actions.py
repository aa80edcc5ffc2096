"""The bot's custom actions: order number form, order status, repeat."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.orders import (
    ORDER_NUMBER_DIGITS,
    OrderLookupError,
    describe_order,
    find_order,
    not_found_text,
    wrong_length_text,
)

FORM_NAME = "order_status_form"
FIRST_ASK = "Sure. What's your order number?"
REPEAT_ASK = "What's the five digit order number? You can also key it in on your phone's keypad."
MIN_SPOKEN_NUMBER_DIGITS = 3

_DIGIT_RUN = re.compile(r"\d+")


def _number_in_text(text: str) -> str | None:
    """The order-number-like digit run in a caller's (normalized) sentence, if any."""
    if text.startswith("/"):
        return None  # a keypad /inform{...}: its entity fills the slot
    runs = [run for run in _DIGIT_RUN.findall(text) if len(run) >= MIN_SPOKEN_NUMBER_DIGITS]
    if not runs:
        return None
    exact = [run for run in runs if len(run) == ORDER_NUMBER_DIGITS]
    return exact[0] if exact else max(runs, key=len)


class ValidateOrderStatusForm(FormValidationAction):
    """Fills ``order_number`` from any digit run and checks that the order exists."""

    def name(self) -> str:
        return "validate_order_status_form"

    async def extract_order_number(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        number = _number_in_text(tracker.latest_message.get("text") or "")
        return {"order_number": number} if number else {}

    def validate_order_number(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        number = re.sub(r"\D", "", str(slot_value or ""))
        if len(number) != ORDER_NUMBER_DIGITS:
            if number:
                dispatcher.utter_message(text=wrong_length_text(number))
            return {"order_number": None}
        try:
            order = find_order(number)
        except OrderLookupError:
            return {"order_number": number}  # action_order_status tells the caller
        if order is None:
            dispatcher.utter_message(text=not_found_text(number))
            return {"order_number": None}
        return {"order_number": number}


class ActionAskOrderNumber(Action):
    """Asks for the order number; after a failed try it also mentions the keypad."""

    def name(self) -> str:
        return "action_ask_order_number"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        dispatcher.utter_message(text=REPEAT_ASK if _asked_before(tracker) else FIRST_ASK)
        return []


def _asked_before(tracker: Tracker) -> bool:
    """Whether this form already asked, or the bot already spoke since the caller's turn."""
    since_user_turn = True
    for event in reversed(tracker.events):
        kind = event.get("event")
        if kind == "user":
            since_user_turn = False
        elif kind == "bot" and (since_user_turn or event.get("text") in (FIRST_ASK, REPEAT_ASK)):
            return True
        elif kind == "active_loop" and event.get("name") == FORM_NAME:
            return False
    return False


class ActionOrderStatus(Action):
    """Says the status of the order in ``order_number``, then asks what else."""

    def name(self) -> str:
        return "action_order_status"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        number = tracker.get_slot("order_number")
        follow_up = "utter_anything_else"
        try:
            order = find_order(number) if number else None
        except OrderLookupError:
            dispatcher.utter_message(response="utter_order_lookup_unavailable")
            return [SlotSet("order_number", None), FollowupAction("utter_offer_agent")]
        if order is None:
            dispatcher.utter_message(text=not_found_text(number or ""))
        else:
            dispatcher.utter_message(text=describe_order(order, dt.date.today()))
            if order.status == "cancelled":
                follow_up = "utter_offer_agent"
        return [SlotSet("order_number", None), FollowupAction(follow_up)]


class ActionRepeat(Action):
    """Says again what the bot said in its last turn (text only, no hangup/handoff).

    A last message that came from a plain response (``utter_*``) is re-run as that
    response, so follow-ups ("Is there anything else?" → "no") still work afterwards.
    Inside the form the form's own question is left out: the form asks it again next.
    """

    def name(self) -> str:
        return "action_repeat"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        turn = _last_bot_turn(tracker)
        events: list[EventType] = []
        if (tracker.active_loop or {}).get("name") == FORM_NAME:
            if turn and turn[-1][1] == FORM_NAME:
                turn = turn[:-1]
        elif not turn:
            dispatcher.utter_message(response="utter_nothing_to_repeat")
        elif _is_plain_response(turn[-1][1], domain):
            events.append(FollowupAction(turn[-1][1]))
            turn = turn[:-1]
        for text, _ in turn:
            dispatcher.utter_message(text=text)
        return events


def _is_plain_response(action: str, domain: DomainDict) -> bool:
    """A domain response without a custom payload (re-running it cannot hang up)."""
    variations = domain.get("responses", {}).get(action) if action.startswith("utter_") else None
    return bool(variations) and not any("custom" in variation for variation in variations)


def _last_bot_turn(tracker: Tracker) -> list[tuple[str, str]]:
    """(text, action name) of the bot messages of the last turn before this one."""
    turn: list[tuple[str, str]] = []
    texts: list[str] = []  # of the action found next while walking back
    user_turns_seen = 0
    for event in reversed(tracker.events):
        kind = event.get("event")
        if kind == "user":
            if turn:
                break
            user_turns_seen += 1
            texts = []
        elif kind == "bot" and user_turns_seen and event.get("text"):
            texts.append(event["text"])
        elif kind == "action" and texts:
            turn.extend((text, event.get("name") or "") for text in texts)
            texts = []
    return list(reversed(turn))
