"""The Rasa client reads, with each reply, the slot the bot asks for next."""

from __future__ import annotations

import uuid

from dialog.rasa_client import RasaClient
from tests.support.dialog_fixtures import TEST_API_TOKEN


async def test_a_reply_says_which_answer_the_bot_asked_for(rasa_server: object) -> None:
    client = RasaClient(rasa_server.url, api_token=TEST_API_TOKEN)  # type: ignore[attr-defined]
    conversation = f"expects-{uuid.uuid4().hex[:8]}"
    try:
        await client.send_event(conversation, "call_start")
        asking = await client.send(conversation, "I'd like to check my order status.")
        answered = await client.send(conversation, "four eight two one three")
    finally:
        await client.aclose()

    assert asking.intent == "check_order_status" and asking.expects == "order_number"
    assert answered.expects is None


async def test_a_reply_carries_the_latest_value_of_each_slot(rasa_server: object) -> None:
    """The order status clears the order number in the round trip that filled it; the
    reply still says which order the caller asked about (for the call's live state)."""
    client = RasaClient(rasa_server.url, api_token=TEST_API_TOKEN)  # type: ignore[attr-defined]
    conversation = f"slots-{uuid.uuid4().hex[:8]}"
    try:
        await client.send_event(conversation, "call_start")
        asking = await client.send(conversation, "I'd like to check my order status.")
        typed = await client.send_keypad(conversation, "48213")
    finally:
        await client.aclose()

    assert not asking.slots
    assert typed.slots == {"order_number": "48213"}
    assert typed.intent == "inform"
