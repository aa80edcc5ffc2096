"""What the bot says first when a caller cut off by a lost node calls again: that the call
dropped, what they were doing, and the question it was waiting on.

The conversation itself goes on in Rasa's tracker (Redis), so these words are not sent to
the dialog: the caller's next answer reaches it as if the call had never dropped.
"""

from __future__ import annotations

import re
from typing import Any

TOPICS = {
    "check_order_status": "an order",
    "inform": "an order",
    "reset_password": "resetting your password",
    "account_help": "your account",
    "billing_question": "billing",
    "request_agent": "speaking to an agent",
}
"""What the caller was asking about, by the intent of their last turn."""

_SENTENCE = re.compile(r"[^.!?]+[.!?]")


def resume_opening(slots: dict[str, Any], last_intent: str | None,
                   last_bot_text: str) -> str:
    """E.g. "Sorry, we got cut off. You were asking about order 4 8 2 1 3. Is there
    anything else I can help you with?"."""
    words = ["Sorry, we got cut off."]
    number = slots.get("order_number")
    if isinstance(number, str) and number.isdigit():
        words.append(f"You were asking about order {' '.join(number)}.")
    elif last_intent in TOPICS:
        words.append(f"You were asking about {TOPICS[last_intent]}.")
    sentences = [s.strip() for s in _SENTENCE.findall(last_bot_text)]
    question = next((s for s in reversed(sentences) if s.endswith("?")), None)
    words.append(question or "How can I help you?")
    return " ".join(words)
