"""Talks to the Rasa server over its REST channel; sender = conversation id."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from dialog.text_normalizer import normalize_caller_text
from switchboard.conversation.engines import BotMessage, DialogReply, DialogUnavailable

log = logging.getLogger(__name__)

KEYPAD_ENTITY = "order_number"
INTENT_TIMEOUT_S = 1.0
INTERNAL_SLOTS = frozenset({"requested_slot", "session_started_metadata"})
"""Rasa's own slots, not the conversation's."""


@dataclass(frozen=True)
class TrackerReading:
    """What a reply carries from the conversation's tracker."""

    intent: str | None = None
    confidence: float | None = None
    expects: str | None = None
    slots: dict[str, Any] | None = None


class RasaClient:
    """Async client of Rasa's REST channel (``/webhooks/rest/webhook``).

    With ``api_token`` (Rasa started with ``--enable-api --auth-token``), each reply also
    carries the intent Rasa recognised, read from the conversation's tracker."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, api_token: str = "") -> None:
        self._base_url = base_url.rstrip("/")
        self._api_token = api_token
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            limits=httpx.Limits(max_keepalive_connections=16),
        )

    async def send(
        self, conversation_id: str, text: str, metadata: dict[str, Any] | None = None
    ) -> DialogReply:
        """Send what the caller said (normalised: spoken digits become digits)."""
        return await self._post(conversation_id, normalize_caller_text(text), metadata,
                                with_intent=True)

    async def send_event(
        self,
        conversation_id: str,
        intent: str,
        metadata: dict[str, Any] | None = None,
        entities: dict[str, str] | None = None,
    ) -> DialogReply:
        """Trigger an intent directly (call start, no input, keypad entry)."""
        message = f"/{intent}"
        if entities:
            message += json.dumps(entities, separators=(",", ":"))
        # the intent is the one sent: no tracker round trip before the reply is spoken,
        # but for an entity (keypad entry), which may fill slots
        return await self._post(conversation_id, message, metadata, with_intent=bool(entities))

    async def send_keypad(
        self, conversation_id: str, digits: str, metadata: dict[str, Any] | None = None
    ) -> DialogReply:
        return await self.send_event(conversation_id, "inform", metadata, {KEYPAD_ENTITY: digits})

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(
        self, conversation_id: str, message: str, metadata: dict[str, Any] | None, *,
        with_intent: bool,
    ) -> DialogReply:
        payload = {"sender": conversation_id, "message": message, "metadata": metadata or {}}
        started = time.perf_counter()
        try:
            response = await self._http.post("/webhooks/rest/webhook", json=payload)
            response.raise_for_status()
            body = response.json()
        except httpx.HTTPStatusError as exc:
            raise DialogUnavailable(
                f"Rasa at {self._base_url} answered HTTP {exc.response.status_code}"
            ) from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise DialogUnavailable(f"Rasa at {self._base_url} is not reachable: {exc!r}") from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        if not isinstance(body, list):
            raise DialogUnavailable(f"Rasa at {self._base_url} sent an unexpected reply: {body!r}")
        messages = [
            BotMessage(text=item.get("text") or None, custom=item.get("custom") or None)
            for item in body
            if isinstance(item, dict)
        ]
        reading = (await self._tracker_reading(conversation_id) if with_intent
                   else TrackerReading())
        return DialogReply(messages=messages, elapsed_ms=elapsed_ms, sent_text=message,
                           intent=reading.intent, confidence=reading.confidence,
                           expects=reading.expects, slots=reading.slots)

    async def _tracker_reading(self, conversation_id: str) -> TrackerReading:
        """The intent of the conversation's latest user message, the latest value of
        each slot and the slot the bot now asks for; empty when the API is off or does
        not answer in time (intents are for the record, slots for the call's live state,
        the requested slot a hint to speech recognition: the call goes on)."""
        if not self._api_token:
            return TrackerReading()
        try:
            response = await self._http.get(
                f"/conversations/{conversation_id}/tracker",
                params={"include_events": "AFTER_RESTART", "token": self._api_token},
                timeout=INTENT_TIMEOUT_S,
            )
            response.raise_for_status()
            # The last user event, not ``latest_message``: while a form fills a slot Rasa
            # leaves ``latest_message`` on the message that started the form.
            tracker = response.json()
            events = [e for e in tracker.get("events") or [] if isinstance(e, dict)]
            users = [e for e in events if e.get("event") == "user"]
            intent = (users[-1].get("parse_data") or {}).get("intent", {}) if users else {}
            requested = (tracker.get("slots") or {}).get("requested_slot")
            # The latest value each slot held: an action may clear a slot in the same
            # round trip that filled it (the order status clears the order number).
            slots = {e.get("name"): e.get("value") for e in events
                     if e.get("event") == "slot" and e.get("value") is not None}
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("conversation %s: no intent from Rasa's tracker: %r", conversation_id, exc)
            return TrackerReading()
        name = intent.get("name") if isinstance(intent, dict) else None
        confidence = intent.get("confidence") if isinstance(intent, dict) else None
        return TrackerReading(
            str(name) if name else None,
            float(confidence) if isinstance(confidence, int | float) else None,
            str(requested) if isinstance(requested, str) and requested else None,
            {key: value for key, value in slots.items()
             if isinstance(key, str) and key not in INTERNAL_SLOTS})
